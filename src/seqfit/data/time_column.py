"""A split's --time-field values, spilled to disk as prepare streams them: bounded memory for any length.

The saved array is what ``time_array`` would make of the whole list (int64 when every value is an integral
number below 2^53, float64 when every value is a number, else strings, ISO for dates), but only one batch
of values is in memory at a time: numbers go to a raw float64 file while every value so far is one, every
value also goes to a text file as a line (which the strings case reads back), and the .npy is written
through a memory map, batch by batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["TimeSpill", "time_text"]

_BATCH = 1 << 16  # values read back and written per batch
_EXACT = 2 ** 53  # integers beyond this do not survive float64


def time_text(v) -> str:
    """One time value as text: ISO for dates and datetimes, '' for a missing one."""
    return v.isoformat() if hasattr(v, "isoformat") else ("" if v is None else str(v))


class TimeSpill:
    def __init__(self, stage: Path, split: str):
        self.text_path, self.num_path = stage / f".{split}.time.txt.tmp", stage / f".{split}.time.f64.tmp"
        self.text, self.nums = open(self.text_path, "w", encoding="utf-8"), open(self.num_path, "wb")
        self.count, self.width = 0, 1
        self.numeric, self.integral = True, True

    def extend(self, values: list) -> None:
        if not values:
            return
        lines = [time_text(v).replace("\n", " ") for v in values]
        self.width = max(self.width, max(len(t) for t in lines))
        self.text.write("\n".join(lines) + "\n")
        self.count += len(values)
        if not self.numeric:
            return
        try:
            nums = np.array([float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            self.numeric = False
            self.nums.close()
            return
        nums.tofile(self.nums)
        self.integral = self.integral and bool(np.isfinite(nums).all() and (nums == np.round(nums)).all()
                                               and (np.abs(nums) < _EXACT).all())

    def save(self, path: Path) -> None:
        """Write the .npy and remove the spill files."""
        self.text.close()
        self.nums.close()
        if self.numeric:
            raw = np.memmap(self.num_path, dtype=np.float64, mode="r") if self.count else np.empty(0, np.float64)
            dtype = np.int64 if self.integral and self.count else np.float64
            out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self.count,))
            for s in range(0, self.count, _BATCH):
                out[s:s + _BATCH] = raw[s:s + _BATCH]
        else:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=f"<U{self.width}", shape=(self.count,))
            with open(self.text_path, encoding="utf-8") as f:
                batch, start = [], 0
                for line in f:
                    batch.append(line[:-1])
                    if len(batch) == _BATCH:
                        out[start:start + len(batch)] = batch
                        start, batch = start + len(batch), []
                out[start:start + len(batch)] = batch
        out.flush()
        del out
        self.discard()

    def discard(self) -> None:
        self.text.close()
        self.nums.close()
        self.text_path.unlink(missing_ok=True)
        self.num_path.unlink(missing_ok=True)
