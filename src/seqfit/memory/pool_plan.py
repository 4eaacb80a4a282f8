"""Which plans reuse chunk-sized buffers from the allocator's pool (memory/allocator.use_buffer_pool), and what
the pool holds at their peak.

A sequence encoder run in time chunks (a classifier's exact checkpointing or truncated chunks, a forecaster's
exact checkpointing) makes and frees the same buffers T/k times a step. On CPU its plan says "buffer_pool": true
and the engine serves them from the heap for reuse. Measured on a 32 x 16,000 classifier in exact mode: 2.1x
faster a step, about 50 MiB more at the peak; forecasters in exact mode (lookback 1,000-4,000): 1.1-2.2x faster.
Not for a bidirectional stack: 2.5x faster, but its whole-layer pieces left 180-240 MiB of holes, varying from
run to run. A language model takes the smaller "window" pool (buffers under 2 MiB; memory/allocator.py), except
in exact mode, where the chunk pool ran only 1.1x faster for a peak 27-40% higher. A sequence-to-sequence run is
not measured yet and keeps the pinned allocator.
"""

from __future__ import annotations

from seqfit.memory.allocator import WINDOW_POOL_TRIM

__all__ = ["CLASSIFIER_POOL_SLACK", "FORECASTER_POOL_SLACK", "pools_chunk_buffers", "pools_window_buffers",
           "window_pool_slack", "pool_slack"]

# Resident bytes the pool holds free at the peak (holes the heap keeps between uses), per byte of one chunk's
# backward activations as each estimator counts them. Measured with `seqfit plan --verify` against the same runs
# without the pool, then taken on the safe side:
#   classifiers  1- and 2-layer LSTM and GRU, 45-127-step chunks, H 64-512: 2-60 MiB, up to 2.9x
#   forecasters  LSTM 1 x 64 (lookback 2,000), 2 x 128 (4,000), GRU 1 x 256 (1,000): 20-79 MiB, up to 5.6x
CLASSIFIER_POOL_SLACK = 3.0
FORECASTER_POOL_SLACK = 6.0


def pools_chunk_buffers(device: str, mode: str, bidirectional: bool = False) -> bool:
    """Whether a plan in ``mode`` (full, exact, truncated) uses the pool (module docstring)."""
    return device == "cpu" and mode != "full" and not bidirectional


def pools_window_buffers(device: str, checkpoint_time: int) -> str | bool:
    """A language model's plan's pool: "window" on CPU (memory/allocator.py), none when it is checkpointed over time."""
    return "window" if device == "cpu" and not checkpoint_time else False


def window_pool_slack(plan: dict) -> int:
    """Bytes the window pool holds at a language model's peak: what the heap may keep free at its top (measured
    0-30 MB over 22 configs, most under 16)."""
    return WINDOW_POOL_TRIM if plan.get("buffer_pool") == "window" else 0


def pool_slack(chunk_bytes: int, per_byte: float) -> int:
    """Bytes the pool holds at the peak of a plan whose chunk's backward activations take ``chunk_bytes``."""
    return int(per_byte * chunk_bytes)
