"""analysis/metrics.py against independent computations: brute-force pairs (Table 1's cosine
novelty), dcor (Fig. 6's energy distance), hand-rolled bootstraps and Mann-Whitney U (CIs,
IQM, probability of improvement)."""
import dcor
import numpy as np
import pytest
from scipy import stats

from analysis import metrics


def brute_force_cosine(x, y):
    """Every pair, one by one in a matrix; a pair with a zero vector counts as 0."""
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    sims = (x @ y.T) / np.outer(np.where(nx > 0, nx, 1), np.where(ny > 0, ny, 1))
    return sims.mean()


# ---- Table 1: cosine novelty ----

def test_cosine_novelty_equals_mean_over_all_pairs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(37, 6)) + 0.3, rng.normal(size=(53, 6))
    assert metrics.cosine_novelty(x, y) == pytest.approx(brute_force_cosine(x, y), abs=1e-12)


def test_cosine_novelty_zero_vectors_count_as_zero_similarity():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(8, 4))
    x[3] = 0.0
    y[[0, 5]] = 0.0
    assert metrics.cosine_novelty(x, y) == pytest.approx(brute_force_cosine(x, y), abs=1e-12)
    assert metrics.cosine_novelty(np.zeros((3, 4)), y) == 0.0


def test_cosine_novelty_identical_directions_is_one_and_rejects_bad_shapes():
    x = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert metrics.cosine_novelty(x, 3 * x) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.cosine_novelty(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ValueError):
        metrics.cosine_novelty(np.ones((2, 3)), np.ones((2, 4)))


def test_cosine_novelty_per_deployment_compares_each_batch_with_all_earlier_ones():
    rng = np.random.default_rng(2)
    batches = [rng.normal(loc=i, size=(20 + i, 5)) for i in range(4)]
    expected = [brute_force_cosine(batches[i], np.concatenate(batches[:i])) for i in range(1, 4)]
    assert metrics.cosine_novelty_per_deployment(batches) == pytest.approx(expected, abs=1e-12)


# ---- Fig. 6: energy distance, trajectory MSE ----

@pytest.mark.parametrize("shape", [(40, 5), (25, 1)])
def test_energy_distance_matches_dcor(shape):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=shape), rng.normal(0.5, 1.3, size=(shape[0] + 7, shape[1]))
    assert metrics.energy_distance(x, y) == pytest.approx(dcor.energy_distance(x, y), rel=1e-10)


def test_energy_distance_1d_samples_and_identical_samples():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=30), rng.normal(1, size=20)
    assert metrics.energy_distance(x, y) == pytest.approx(dcor.energy_distance(x[:, None], y[:, None]), rel=1e-10)
    assert metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_in_small_blocks_gives_the_same_value(monkeypatch):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(101, 3)), rng.normal(size=(67, 3))
    whole = metrics.energy_distance(x, y)
    import algos.core.model_eval as model_eval
    monkeypatch.setattr(model_eval, "_MAX_PAIRWISE_ELEMENTS", 50)  # blocks of one row
    assert metrics.energy_distance(x, y) == pytest.approx(whole, rel=1e-12)


def test_trajectory_mse_per_trajectory_then_mean():
    a, b = np.zeros((4, 2)), np.ones((4, 2))
    assert metrics.trajectory_mse(a, b) == 1.0
    # two trajectories of different lengths: each weighs the same
    im = [np.zeros((2, 3)), np.zeros((10, 3))]
    re = [np.full((2, 3), 2.0), np.ones((10, 3))]
    assert metrics.trajectory_mse(im, re) == pytest.approx((4.0 + 1.0) / 2)
    assert metrics.trajectory_mse(np.zeros((3, 5, 2)), np.ones((3, 5, 2))) == 1.0
    with pytest.raises(ValueError):
        metrics.trajectory_mse(np.zeros((3, 2)), np.zeros((4, 2)))


# ---- CIs ----

def manual_percentile_bootstrap(x, n=20_000, seed=123):
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    return np.percentile(means, [2.5, 97.5])


def test_bootstrap_ci_contains_mean_and_agrees_with_a_hand_rolled_bootstrap():
    x = np.random.default_rng(6).normal(10, 2, size=30)
    ci = metrics.bootstrap_ci(x)
    assert ci.point == pytest.approx(x.mean())
    assert ci.low < x.mean() < ci.high
    low, high = manual_percentile_bootstrap(x)
    assert ci.low == pytest.approx(low, abs=0.05) and ci.high == pytest.approx(high, abs=0.05)


def test_bootstrap_ci_narrows_with_more_samples():
    rng = np.random.default_rng(7)
    widths = [(lambda c: c.high - c.low)(metrics.bootstrap_ci(rng.normal(size=n))) for n in (5, 50, 500)]
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_ci_small_and_degenerate_samples_never_raise():
    one = metrics.bootstrap_ci([3.5])
    assert one.point == 3.5 and np.isnan(one.low) and np.isnan(one.high)
    assert all(np.isnan(metrics.bootstrap_ci([])))
    assert metrics.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert metrics.bootstrap_ci([1.0, np.nan, 3.0]).point == 2.0  # NaN = missing
    two = metrics.bootstrap_ci([1.0, 3.0])
    assert (two.low, two.high) == (1.0, 3.0)


def test_bootstrap_ci_is_reproducible_with_its_seed():
    x = np.arange(10.0) ** 1.5
    assert metrics.bootstrap_ci(x, seed=3) == metrics.bootstrap_ci(x, seed=3)
    assert metrics.bootstrap_ci(x, statistic=np.median).point == np.median(x)


def test_iqm_known_values():
    assert metrics.iqm(np.arange(8)) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert metrics.iqm(np.arange(100)) == pytest.approx(np.mean(np.arange(25, 75)))
    assert metrics.iqm([[0, 1, 2, 3], [4, 5, 6, 100]]) == pytest.approx(np.mean([2, 3, 4, 5]))  # outlier-proof


def manual_stratified_iqm(tasks, n=10_000, seed=321):
    """Resample the runs of each task on its own, pool, take the IQM: rliable's recipe."""
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([t[rng.integers(0, len(t), size=(n, len(t)))] for t in tasks], axis=1)
    return np.percentile(stats.trim_mean(pooled, 0.25, axis=1), [2.5, 97.5])


def test_stratified_iqm_ci_agrees_with_a_hand_rolled_stratified_bootstrap():
    rng = np.random.default_rng(8)
    tasks = [rng.normal(0.2, 0.1, 5), rng.normal(0.6, 0.2, 5), rng.normal(0.9, 0.05, 4)]
    ci = metrics.stratified_iqm_ci(tasks)
    assert ci.point == pytest.approx(stats.trim_mean(np.concatenate(tasks), 0.25))
    low, high = manual_stratified_iqm(tasks)
    assert ci.low == pytest.approx(low, abs=0.02) and ci.high == pytest.approx(high, abs=0.02)


def test_stratified_iqm_holds_single_run_tasks_fixed():
    ci = metrics.stratified_iqm_ci([np.array([1.0, 2.0, 3.0]), np.array([5.0])])
    assert ci.point == pytest.approx(2.5)
    assert 1.0 <= ci.low <= ci.point <= ci.high <= 5.0
    only_singles = metrics.stratified_iqm_ci([[1.0], [2.0]])
    assert only_singles.point == 1.5 and np.isnan(only_singles.low)


def test_probability_of_improvement_known_cases():
    assert metrics.probability_of_improvement([[5.0, 6.0, 7.0]], [[1.0, 2.0]]) == (1.0, 1.0, 1.0)
    assert metrics.probability_of_improvement([[1.0, 2.0]], [[5.0, 6.0, 7.0]]) == (0.0, 0.0, 0.0)
    same = metrics.probability_of_improvement([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])
    assert same.point == 0.5 and same.low < 0.5 < same.high
    assert metrics.probability_of_improvement([[4.0, 4.0]], [[4.0, 4.0]]) == (0.5, 0.5, 0.5)


def test_probability_of_improvement_is_mann_whitney_u_averaged_over_tasks():
    rng = np.random.default_rng(9)
    xs = [rng.normal(1, 1, 5), rng.normal(0, 1, 4).round(0)]
    ys = [rng.normal(0, 1, 5), rng.normal(0, 1, 6).round(0)]  # rounding makes ties
    per_task = [stats.mannwhitneyu(x, y).statistic / (len(x) * len(y)) for x, y in zip(xs, ys)]
    poi = metrics.probability_of_improvement(xs, ys)
    assert poi.point == pytest.approx(np.mean(per_task))
    assert poi.low <= poi.point <= poi.high
