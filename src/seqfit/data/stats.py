"""Per-column count/mean/std/min/max in one streaming pass, exact to float64 rounding.

Each batch's mean and sum of squared deviations (M2) are computed with NumPy, then merged into the
running totals with Chan et al.'s parallel update ("Updating formulae and a pairwise algorithm for
computing sample variances", 1979), which is Welford's update generalised to a batch:

    delta = mean_b - mean_a;  n = n_a + n_b
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

so memory is one batch, and the result equals NumPy's on the whole array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RunningStats"]


@dataclass
class RunningStats:
    num_columns: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    min: np.ndarray = field(init=False)
    max: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.num_columns)
        self.m2 = np.zeros(self.num_columns)
        self.min = np.full(self.num_columns, np.inf)
        self.max = np.full(self.num_columns, -np.inf)

    def update(self, rows: np.ndarray) -> None:
        """Fold in a (n, F) batch of finite values."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.num_columns)
        n_b = len(rows)
        if n_b == 0:
            return
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (n_a * n_b / n)
        self.count = n
        self.min = np.minimum(self.min, rows.min(axis=0))
        self.max = np.maximum(self.max, rows.max(axis=0))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0, as np.std)."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros(self.num_columns)

    def to_dict(self, names: list[str]) -> dict:
        return {name: {"count": self.count, "mean": float(self.mean[i]), "std": float(self.std[i]),
                       "min": float(self.min[i]), "max": float(self.max[i])} for i, name in enumerate(names)}
