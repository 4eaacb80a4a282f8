"""Arrow columns -> the reader interface's values: float64 arrays for numeric fields, lists otherwise."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

__all__ = ["to_columns"]


def to_columns(table, fields: Sequence[str], numeric: Sequence[str]) -> dict:
    out = {}
    for name in fields:
        col = table.column(name)
        if name in numeric:
            out[name] = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            out[name] = col.to_pylist()
    return out
