"""Accuracy of imagined rollouts against real ones (the paper's Fig. 6)."""
import numpy as np
import torch


def _mean_pairwise_distance(x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """E||X - Y|| over all pairs, in chunks so that memory stays O(chunk * len(y))."""
    total = 0.0
    for i in range(0, len(x), chunk):
        total += torch.cdist(x[i:i + chunk], y).sum().item()
    return total / (len(x) * len(y))


def energy_distance(x, y) -> float:
    """2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| for two samples of vectors (rows); the
    V-statistic (all pairs, self-pairs included), the convention of dcor.energy_distance."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    y = torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(len(y), -1))
    if len(x) == 0 or len(y) == 0:
        raise ValueError("energy_distance needs two non-empty samples")
    return 2 * _mean_pairwise_distance(x, y) - _mean_pairwise_distance(x, x) - _mean_pairwise_distance(y, y)


def trajectory_mse(imagined, real) -> float:
    """Mean over steps and state dimensions of the squared error of one replayed trajectory."""
    imagined, real = np.asarray(imagined, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if imagined.shape != real.shape:
        raise ValueError(f"trajectory shapes differ: {imagined.shape} vs {real.shape}")
    return float(np.mean((imagined - real) ** 2))
