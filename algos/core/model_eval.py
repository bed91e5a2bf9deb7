"""Accuracy of imagined rollouts against real ones (the paper's Fig. 6). The run writes these
numbers to model_eval.csv; analysis.metrics re-exports the same functions."""
from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

# Pairwise-distance blocks hold at most this many float64 entries (~32 MB).
_MAX_PAIRWISE_ELEMENTS = 4_000_000


def _rows(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [n, dim], got shape {x.shape}")
    return x


def _mean_pairwise_distance(a: np.ndarray, b: np.ndarray) -> float:
    rows = max(1, _MAX_PAIRWISE_ELEMENTS // len(b))
    total = sum(cdist(a[i:i + rows], b).sum() for i in range(0, len(a), rows))
    return total / (len(a) * len(b))


def energy_distance(x, y) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| of two samples (rows = vectors; a 1-D
    array is a sample of scalars), Euclidean norm, V-statistic (the means include the i = j
    pairs), the convention of dcor.energy_distance. Computed in blocks of rows, so memory
    stays bounded for large samples."""
    x, y = _rows(x, "x"), _rows(y, "y")
    return float(2 * _mean_pairwise_distance(x, y) - _mean_pairwise_distance(x, x)
                 - _mean_pairwise_distance(y, y))


def trajectory_mse(imagined, real) -> float:
    """Trajectory-wise MSE: per trajectory, the mean over steps and state dims of the
    squared error between imagined and real states; then the mean over trajectories.
    Accepts one trajectory [T, dim], a stack [n, T, dim], or two equal-length sequences of
    [T_i, dim] arrays (trajectories may differ in length)."""
    if isinstance(imagined, np.ndarray) and imagined.ndim == 2:
        imagined, real = [imagined], [real]
    if len(imagined) != len(real) or len(imagined) == 0:
        raise ValueError(f"need the same non-zero number of trajectories: {len(imagined)} vs {len(real)}")
    per_traj = []
    for im, re in zip(imagined, real):
        im, re = np.asarray(im, dtype=np.float64), np.asarray(re, dtype=np.float64)
        if im.shape != re.shape:
            raise ValueError(f"trajectory shapes differ: {im.shape} vs {re.shape}")
        per_traj.append(np.mean((im - re) ** 2))
    return float(np.mean(per_traj))
