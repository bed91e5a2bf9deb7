"""Table 1's two readings of the cosine score, against brute force on hand-checkable inputs."""
import numpy as np
import pytest

from algos.core.novelty import (NOVELTY_COLUMNS, cosine_novelty_per_deployment, nearest_cosine_per_deployment,
                                novelty_rows)


def brute_nearest(new, previous):
    """For each new state, the largest cosine to any earlier state, pair by pair."""
    def cos(x, y):
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        return 0.0 if nx == 0 or ny == 0 else float(x @ y / (nx * ny))
    return float(np.mean([max(cos(x, y) for y in previous) for x in new]))


def test_nearest_neighbour_reading_by_hand():
    b1 = np.array([[1.0, 0.0], [0.0, 2.0]])
    b2 = np.array([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])    # nearest cosines 1, 1/sqrt(2), 0 (to [0, 2])
    b3 = np.array([[0.0, 0.0], [1.0, 1.0]])                 # zero row: 0; [1, 1] has itself in B(2): 1
    got = nearest_cosine_per_deployment([b1, b2, b3], device="cpu")
    np.testing.assert_allclose(got, [(1 + 1 / np.sqrt(2) + 0) / 3, (0 + 1) / 2], atol=1e-12)
    # the all-pairs reading of the same batches: B(2) vs B(1) = mean of the 6 pair cosines
    pairs = [1, 0, 1 / np.sqrt(2), 1 / np.sqrt(2), -1, 0]
    assert cosine_novelty_per_deployment([b1, b2, b3])[0] == pytest.approx(np.mean(pairs))


@pytest.mark.parametrize("block_elements", [7, 64, 1 << 24])   # many tiny blocks, some, one
def test_nearest_neighbour_equals_brute_force_in_any_blocking(block_elements):
    rng = np.random.default_rng(0)
    batches = [rng.normal(0.2 * i, 1.0, size=(n, 5)) for i, n in enumerate((40, 23, 31))]
    got = nearest_cosine_per_deployment(batches, device="cpu", block_elements=block_elements)
    expected = [brute_nearest(batches[1], batches[0]), brute_nearest(batches[2], np.vstack(batches[:2]))]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_novelty_rows_hold_both_readings_per_deployment():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(20, 3)) for _ in range(3)]
    rows = novelty_rows(batches, device="cpu")
    assert [tuple(r) for r in rows] == [NOVELTY_COLUMNS] * 2 and [r["deployment"] for r in rows] == [2, 3]
    assert [r["cosine_similarity"] for r in rows] == cosine_novelty_per_deployment(batches)
    assert all(r["nn_cosine_similarity"] > r["cosine_similarity"] for r in rows)  # the max exceeds the mean
    assert novelty_rows(batches[:1]) == []


def test_bad_batches_are_rejected():
    with pytest.raises(ValueError, match="batch 2 must be a non-empty 2-D array"):
        nearest_cosine_per_deployment([np.ones((2, 3)), np.ones(3)], device="cpu")
