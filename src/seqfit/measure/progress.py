"""Training progress: a tqdm bar on a terminal, plain periodic lines in logs.

A bar redraws itself with carriage returns and ANSI escapes, which turn a log file or a CI
transcript into one unreadable line; so when the stream is not a terminal we print a whole line
every ``plain_every_s`` seconds instead, with no control characters at all:

    train 120/1000 (12%) loss=4.123 tok_s=12000 mem=1.2 GiB | 1m02s elapsed, eta 8m10s
"""

from __future__ import annotations

import re
import sys
import time
from typing import IO, Any

from tqdm import tqdm

__all__ = ["Progress", "format_postfix", "format_duration"]

# CSI sequences (colours, cursor moves) whole, then any other control character but \t and \n
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def _clean(text: str) -> str:
    return _CONTROL.sub("", text)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if 1e3 <= abs(value) < 1e12 else f"{value:.4g}"  # rates in full, losses to 4 digits
    return str(value)


def format_postfix(postfix: dict[str, Any]) -> str:
    """loss=4.1234567, tok_s=12000.0 -> 'loss=4.123 tok_s=12000'."""
    return " ".join(f"{k}={_format_value(v)}" for k, v in postfix.items())


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts steps towards ``total`` (None: unknown) and shows the latest ``postfix`` values."""

    def __init__(self, total: int | None, *, desc: str = "train", stream: IO[str] | None = None,
                 plain: bool | None = None, plain_every_s: float = 10.0, initial: int = 0):
        self.stream = stream if stream is not None else sys.stderr
        if plain is None:
            isatty = getattr(self.stream, "isatty", None)
            plain = not (callable(isatty) and isatty())
        self.plain = plain
        self.total = total
        self.desc = desc
        self.n = initial
        self.initial = initial  # a resumed run: the rate counts only the steps done now
        self.plain_every_s = plain_every_s
        self.postfix: dict[str, Any] = {}
        self.start = time.monotonic()
        self._last_line = float("-inf")
        self._printed_n: int | None = None
        self._closed = False
        self._bar = None if plain else tqdm(total=total, desc=desc, file=self.stream, initial=initial,
                                            unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(format_postfix(self.postfix), refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        done = self.total is not None and self.n >= self.total
        if done or now - self._last_line >= self.plain_every_s:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        timing = f"{format_duration(elapsed)} elapsed"
        done_now = self.n - self.initial
        if self.total and done_now > 0 and self.n < self.total:
            timing += f", eta {format_duration(elapsed / done_now * (self.total - self.n))}"
        parts = [self.desc, count, format_postfix(self.postfix), "|", timing]
        self._emit(" ".join(p for p in parts if p))
        self._last_line = now
        self._printed_n = self.n

    def _emit(self, line: str) -> None:
        self.stream.write(_clean(line) + "\n")
        self.stream.flush()

    def write(self, line: str) -> None:
        """A message of its own line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self._emit(line)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._printed_n != self.n:
            self._line(time.monotonic())  # the last count always makes it to the log

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
