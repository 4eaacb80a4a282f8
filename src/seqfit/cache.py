"""Where seqfit keeps what it measured about this machine (memory calibration, matrix-product ceilings, which
library runs fp32 products): $SEQFIT_CACHE_DIR, default ~/.cache/seqfit."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    return Path(os.environ.get("SEQFIT_CACHE_DIR") or Path.home() / ".cache" / "seqfit")
