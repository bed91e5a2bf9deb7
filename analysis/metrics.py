"""The numbers behind the figures and claims: novelty of a batch (Table 1), accuracy of
imagined rollouts (Fig. 6), and interval estimates (every CI in paper_figures/).

Interval estimates use scipy.stats.bootstrap with the percentile method (rliable's default;
BCa is unstable at the 2-5 seeds of our grids) and a fixed seed, so re-running the analysis
gives the same numbers. rliable is not used (it fails at import with pandas 3, see
shared/notes/STATS.md); tests/test_metrics.py checks these estimates against independent
computations instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_METHOD = "percentile"
BOOTSTRAP_SEED = 0
IQM_TRIM = 0.25  # the interquartile mean drops the lowest and highest 25 % of the scores


class Interval(NamedTuple):
    """A point estimate and its confidence interval (low, high); NaN bounds = no CI."""
    point: float
    low: float
    high: float


NO_ESTIMATE = Interval(np.nan, np.nan, np.nan)


# ---- novelty of a batch (Table 1) ----

from algos.core.novelty import (_as_rows, _sum_unit_rows, cosine_novelty,  # noqa: E402,F401  (re-exported)
                                cosine_novelty_per_deployment, nearest_cosine_per_deployment, novelty_rows,
                                unit_rows)


# ---- accuracy of imagined rollouts (Fig. 6): one implementation, shared with the run ----

from algos.core.model_eval import energy_distance, trajectory_mse  # noqa: E402,F401  (re-exported)


# ---- interval estimates ----

def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def bootstrap_ci(samples, statistic: Callable = np.mean, confidence: float = CONFIDENCE,
                 seed: int = BOOTSTRAP_SEED, n_resamples: int = N_RESAMPLES) -> Interval:
    """statistic(samples) and its percentile-bootstrap CI (scipy.stats.bootstrap).

    Non-finite entries are dropped as missing. No samples: all NaN. One sample (e.g. one
    seed): the point with NaN bounds, since one value says nothing about spread. Never
    raises for small n. `statistic` must accept `axis` (like np.mean, np.median)."""
    x = _finite(samples)
    if len(x) == 0:
        return NO_ESTIMATE
    point = float(statistic(x))
    if len(x) < 2:
        return Interval(point, np.nan, np.nan)
    if np.all(x == x[0]):  # no spread: every resample gives the same statistic
        return Interval(point, point, point)
    res = stats.bootstrap((x,), statistic, n_resamples=n_resamples, confidence_level=confidence,
                          method=BOOTSTRAP_METHOD, rng=np.random.default_rng(seed))
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50 % of the (flattened) scores."""
    return float(stats.trim_mean(np.asarray(x, dtype=np.float64).ravel(), IQM_TRIM))


def _iqm_pooled(*task_samples, axis=-1):
    return stats.trim_mean(np.concatenate(task_samples, axis=axis), IQM_TRIM, axis=axis)


def _tasks(scores_per_task) -> list[np.ndarray]:
    if isinstance(scores_per_task, np.ndarray) and scores_per_task.ndim == 1:
        scores_per_task = [scores_per_task]
    return [_finite(t) for t in scores_per_task]


def _stratified(statistic, samples: list[np.ndarray], confidence, seed, n_resamples) -> Interval:
    """statistic(*samples), with a CI from resampling the runs within each sample on its own
    (scipy.stats.bootstrap with one sample per task = the stratified bootstrap). A sample
    of one run is held fixed (resampling one run always gives that run; scipy needs two);
    if no sample has two runs, there is no CI (NaN bounds)."""
    point = float(statistic(*samples))
    resampled = [i for i, s in enumerate(samples) if len(s) >= 2]
    if not resampled:
        return Interval(point, np.nan, np.nan)

    def with_fixed(*drawn, axis=-1):
        batch, drawn = drawn[0].shape[:-1], iter(drawn)
        return statistic(*[next(drawn) if len(s) >= 2 else np.broadcast_to(s, batch + s.shape)
                           for s in samples], axis=axis)

    res = stats.bootstrap(tuple(samples[i] for i in resampled), with_fixed, n_resamples=n_resamples,
                          vectorized=True, confidence_level=confidence, method=BOOTSTRAP_METHOD,
                          rng=np.random.default_rng(seed))
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def stratified_iqm_ci(scores_per_task, confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED,
                      n_resamples: int = N_RESAMPLES) -> Interval:
    """IQM of all runs of all tasks pooled (rliable's aggregate IQM) with a stratified
    bootstrap CI. `scores_per_task`: one array of run scores per task (lengths may differ).
    Tasks without scores are dropped; a task with a single run is held fixed."""
    tasks = [t for t in _tasks(scores_per_task) if len(t)]
    if not tasks:
        return NO_ESTIMATE
    return _stratified(_iqm_pooled, tasks, confidence, seed, n_resamples)


def _poi_pair(x, y):
    """P(X > Y) + 0.5 P(X = Y) over all run pairs; batched over leading axes."""
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def probability_of_improvement(x_runs, y_runs, confidence: float = CONFIDENCE,
                               seed: int = BOOTSTRAP_SEED, n_resamples: int = N_RESAMPLES) -> Interval:
    """P(X > Y) + 0.5 P(X = Y) per task (the Mann-Whitney U statistic over m*n), averaged
    over tasks, with a stratified bootstrap CI (X's and Y's runs resampled within each
    task, independently). `x_runs`, `y_runs`: one array of run scores per task (or a 1-D
    array for one task). Tasks where either side has no runs are dropped; a side with a
    single run is held fixed."""
    pairs = [(x, y) for x, y in zip(_tasks(x_runs), _tasks(y_runs), strict=True) if len(x) and len(y)]
    if not pairs:
        return NO_ESTIMATE
    n_tasks = len(pairs)

    def poi(*samples, axis=-1):
        return np.mean([_poi_pair(samples[t], samples[n_tasks + t]) for t in range(n_tasks)], axis=0)

    return _stratified(poi, [x for x, _ in pairs] + [y for _, y in pairs], confidence, seed, n_resamples)
