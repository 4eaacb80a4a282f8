"""RUN_DIR/metrics.jsonl: one JSON object a line, flushed as written, optionally mirrored to TensorBoard.

A record has a ``kind`` ("train", "valid", "memory", "end", ...), a ``step`` and numbers:

    {"kind": "train", "step": 200, "loss": 4.81, "ppl": 122.7, "tokens_per_s": 11843.0, "lr": 20.0,
     "rss": 812384256, "anon": 530579456, "time": 1718000000.1}

JSON lines survive a crash (every line written is whole, a torn last line is skipped on reading)
and can be appended to when a run resumes. Non-finite numbers are written as NaN / Infinity, which
Python's json reads back, so a diverged loss stays visible.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from seqfit.errors import SeqfitError

__all__ = ["MetricsLog", "read_metrics"]

_NOT_SCALARS = {"kind", "step", "time"}


def _plain(value: Any) -> Any:
    """numpy and torch scalars (and 0-d arrays) as Python numbers, for json."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metrics value of type {type(value).__name__} is not JSON serialisable")


def _open_tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SeqfitError("TensorBoard logging needs the tensorboard package: pip install 'seqfit[tensorboard]'") from None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLog:
    """Appends records to ``path`` (``append=False`` starts the file afresh)."""

    def __init__(self, path: Path | str, *, append: bool = False, tensorboard_dir: Path | str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = _open_tensorboard(Path(tensorboard_dir)) if tensorboard_dir is not None else None
        if append and self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"  # the last run died mid-line: start ours on a fresh one
        else:
            torn = False
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        if torn:
            self._file.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            raise ValueError(f"metrics log {self.path} is closed")
        record = dict(record)
        record.setdefault("time", time.time())
        line = json.dumps(record, default=_plain)
        self._file.write(line + "\n")
        self._file.flush()  # a crashed run keeps every line written so far
        if self._tb is not None:
            self._scalars(json.loads(line))

    def _scalars(self, record: dict[str, Any]) -> None:
        kind, step = record.get("kind", "train"), record.get("step")
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            self._tb.add_scalar(f"{kind}/{key}", value, global_step=step)
        self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a torn last line (the run died mid-write) is skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SeqfitError(f"no metrics file at {path} (has the run written any steps?)") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            # a torn line followed by more (a resumed run appended after a crash) is skipped too,
            # but only when it is cut short JSON, not some other file
            if line.lstrip().startswith("{") and not line.rstrip().endswith("}"):
                continue
            raise SeqfitError(f"{path}:{number} is not a JSON metrics line: {line[:60]!r}") from None
        if not isinstance(record, dict):
            raise SeqfitError(f"{path}:{number} is not a JSON object")
        records.append(record)
    return records
