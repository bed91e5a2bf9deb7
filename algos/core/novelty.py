"""Novelty of a batch (the paper's Table 1) under the two readings of its "cosine score" of B(i)
against B(1..i-1):
- `mean_all_pairs` (`cosine_similarity`): the mean cosine similarity over all pairs (new, earlier);
- `nearest_neighbour` (`nn_cosine_similarity`): for each new state its highest cosine similarity
  to any earlier state, averaged over the new batch (an exact search: blocked matrix products
  of unit vectors, on the GPU when present).
The run writes both to novelty.csv (`novelty_rows`; batches are not committed);
analysis.metrics re-exports these functions."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

NOVELTY_COLUMNS = ("deployment", "cosine_similarity", "nn_cosine_similarity")


def _as_rows(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [n, dim], got shape {x.shape}")
    return x


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row stays zero (its cosine with anything is 0)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _sum_unit_rows(x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    return sum(unit_rows(x[i:i + chunk]).sum(axis=0) for i in range(0, len(x), chunk))


def cosine_novelty(new_states, previous_states) -> float:
    """Mean cosine similarity over ALL pairs (x in new_states, y in previous_states).

    Exact in O(N + M): mean_{x,y} x̂·ŷ = (mean_x x̂)·(mean_y ŷ), with x̂ = x/||x||.
    Zero vectors: the cosine with a zero vector is undefined; such a pair counts as
    similarity 0 (the zero row's unit vector is taken as 0, as sklearn's cosine_similarity
    does) and still counts in the number of pairs.
    Higher similarity means the new batch is LESS novel.
    """
    new = _as_rows(new_states, "new_states")
    prev = _as_rows(previous_states, "previous_states")
    if new.shape[1] != prev.shape[1]:
        raise ValueError(f"state dims differ: {new.shape[1]} vs {prev.shape[1]}")
    return float(_sum_unit_rows(new) @ _sum_unit_rows(prev) / (len(new) * len(prev)))


def cosine_novelty_per_deployment(batches: Sequence[np.ndarray]) -> list[float]:
    """Table 1 for one run: [cosine_novelty(B(i), B(1..i-1)) for i = 2..I], with a running
    sum of unit vectors, so that B(1..i-1) is never concatenated."""
    batches = [_as_rows(b, f"batch {i + 1}") for i, b in enumerate(batches)]
    running, count, out = _sum_unit_rows(batches[0]), len(batches[0]), []
    for batch in batches[1:]:
        s = _sum_unit_rows(batch)
        out.append(float(s @ running / (len(batch) * count)))
        running, count = running + s, count + len(batch)
    return out


def _unit_tensor(x: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(unit_rows(x), device=device).to(dtype)


def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def nearest_cosine_per_deployment(batches: Sequence[np.ndarray], device=None,
                                  block_elements: int = 1 << 24) -> list[float]:
    """Table 1, nearest-neighbour reading, for one run: for i = 2..I, the mean over s in B(i) of
    max_{y in B(1..i-1)} cos(s, y). Exact: every pair's cosine is computed, in blocks of at most
    `block_elements` products (unit rows, one matrix product per block, a running max per new
    state), so that B(1..i-1) is never concatenated. float64 on the CPU, float32 on a GPU
    (|error| < 1e-6). A zero row has cosine 0 with everything."""
    device = _default_device(device)
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    batches = [_as_rows(b, f"batch {i + 1}") for i, b in enumerate(batches)]
    units = [_unit_tensor(b, device, dtype) for b in batches]
    out = []
    for i in range(1, len(units)):
        new = units[i]
        best = torch.full((len(new),), -1.0, device=device, dtype=dtype)
        for prev in units[:i]:
            cols = max(1, min(len(prev), block_elements // max(1, min(len(new), 4096))))
            rows = max(1, block_elements // cols)
            for c in range(0, len(prev), cols):
                prev_t = prev[c:c + cols].T
                for r in range(0, len(new), rows):
                    block_max = (new[r:r + rows] @ prev_t).max(dim=1).values
                    best[r:r + rows] = torch.maximum(best[r:r + rows], block_max)
        out.append(float(best.mean()))
    return out


def novelty_rows(batches: Sequence[np.ndarray], device=None) -> list[dict]:
    """Both readings of Table 1 for one run, one dict per deployment i >= 2 with the keys of
    NOVELTY_COLUMNS (what novelty.csv holds). Fewer than two batches: no rows."""
    if len(batches) < 2:
        return []
    mean_all = cosine_novelty_per_deployment(batches)
    nearest = nearest_cosine_per_deployment(batches, device)
    return [{"deployment": i, "cosine_similarity": m, "nn_cosine_similarity": n}
            for i, (m, n) in enumerate(zip(mean_all, nearest), start=2)]
