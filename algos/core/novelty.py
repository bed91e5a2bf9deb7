"""Novelty of a batch (the paper's Table 1): the mean cosine similarity of its states to the
states of all earlier batches. The run writes it to novelty.csv (batches are not committed);
analysis.metrics re-exports these functions."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
