"""Calendar features of a series store's time field (--calendar): known-future inputs computed, never stored.

Each part is a phase in [0, 1) turned into a (sin, cos) pair, so the last hour of a day sits next to its first:

    hour      the time of day: seconds since midnight / 86,400          (sub-daily data only)
    weekday   Monday 0 .. Sunday 6, / 7   (1970-01-01, day 0, was a Thursday: weekday = (day + 3) mod 7)
    yearday   days since 1 January / the days in that year (365 or 366)

A run keeps only the parts that vary over its train split's first SAMPLE_ROWS rows (daily data has no hour
of day; yearly data no weekday). Times are the split's stored ``*.time.npy`` values (ISO date/time
strings or numpy datetimes; plain numbers have no calendar and are refused), read for each window on
demand: a row past its series' end (a forecast beyond the data) gets a time extrapolated from the series'
last spacing, as predict's ``future_times`` does.
"""

from __future__ import annotations

import numpy as np

from seqfit.errors import SeqfitError

__all__ = ["PARTS", "SAMPLE_ROWS", "to_seconds", "phases", "choose_parts", "features", "window_seconds"]

PARTS = ("hour", "weekday", "yearday")
SAMPLE_ROWS = 100_000  # train rows that decide which parts vary
DAY = 86_400


def to_seconds(values) -> np.ndarray:
    """Times (ISO strings or datetime64, any shape) as int64 seconds since 1970-01-01; one line if not dates."""
    values = np.asarray(values)
    if values.dtype.kind in "iufb":
        raise SeqfitError("--calendar needs dates or times (ISO, e.g. 2024-01-31 or 2024-01-31T13:00) in the time "
                          "field; it holds plain numbers")
    try:
        return values.astype("datetime64[s]").astype(np.int64)
    except (ValueError, TypeError):
        first = values.ravel()[0] if values.size else ""
        raise SeqfitError(f"--calendar needs ISO dates or times in the time field; cannot read {str(first)!r} "
                          "as one") from None


def phases(seconds: np.ndarray) -> dict[str, np.ndarray]:
    """Each part's phase in [0, 1) (float64, the shape of ``seconds``)."""
    days = np.floor_divide(seconds, DAY)
    year = days.astype("datetime64[D]").astype("datetime64[Y]")
    start = year.astype("datetime64[D]").astype(np.int64)
    length = (year + 1).astype("datetime64[D]").astype(np.int64) - start
    return {"hour": (seconds - days * DAY) / DAY, "weekday": ((days + 3) % 7) / 7, "yearday": (days - start) / length}


def choose_parts(times) -> list[str]:
    """The parts that vary over ``times`` (a sample of the train split's), in PARTS order."""
    if times is None:
        raise SeqfitError("--calendar needs a time field: prepare the data with --time-field COLUMN")
    ph = phases(to_seconds(times[:SAMPLE_ROWS]))
    return [p for p in PARTS if len(ph[p]) and np.ptp(ph[p]) > 0]


def features(seconds: np.ndarray, parts: list[str]) -> np.ndarray:
    """(..., 2 x parts) float32: sin and cos of each part's phase, part by part."""
    ph = phases(seconds)
    out = []
    for p in parts:
        angle = 2 * np.pi * ph[p]
        out += [np.sin(angle), np.cos(angle)]
    return np.stack(out, -1).astype(np.float32) if out else np.zeros((*seconds.shape, 0), np.float32)


def window_seconds(times, offsets: np.ndarray, starts, n: int) -> np.ndarray:
    """(B, n) int64 seconds of rows start .. start + n - 1 of each window; rows past their series' end are
    extrapolated from its last spacing (one day when a series has one row)."""
    starts = np.asarray(starts, dtype=np.int64)
    series = np.searchsorted(offsets, starts, side="right") - 1  # (B,)
    first, end = offsets[series], offsets[series + 1]  # (B,) each
    rows = starts[:, None] + np.arange(n)  # (B, n)
    sec = to_seconds(times[np.minimum(rows, end[:, None] - 1)])  # (B, n)
    if (past := rows >= end[:, None]).any():
        last = to_seconds(times[end - 1])  # (B,)
        prev = np.where(end - 2 >= first, to_seconds(times[np.maximum(end - 2, first)]), last - DAY)
        sec = np.where(past, last[:, None] + (rows - end[:, None] + 1) * (last - prev)[:, None], sec)
    return sec
