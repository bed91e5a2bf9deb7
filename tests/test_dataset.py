"""algos/core/dataset.py: D_all kept as separate deployment batches B(1..i), one label U-hat
per transition fixed when its batch arrived (eq. 9), and the start states of imagined rollouts."""
import numpy as np
import pytest

from algos.core.dataset import DeploymentDataset

OBS, ACT = 3, 2


def batch(n, offset, episode_len=4):
    """A collector-shaped batch whose obs[:, 0] = offset + index (to trace rows)."""
    obs = np.zeros((n, OBS), np.float32)
    obs[:, 0] = offset + np.arange(n)
    starts = np.arange(n) % episode_len == 0
    return {"obs": obs, "act": np.zeros((n, ACT), np.float32), "rew": np.arange(n, dtype=np.float32),
            "next_obs": obs + 1, "terminated": np.zeros(n, bool), "truncated": np.arange(n) == n - 1,
            "episode_start": starts}


def test_batches_kept_apart_with_their_labels():
    data = DeploymentDataset(OBS, ACT)
    b1 = batch(6, 0)
    data.add(b1)                                    # B(1): labels default to 1
    data.add(batch(4, 100), labels=np.array([0.1, 0.2, 0.3, 0.4]))
    b1["obs"][:] = -1                               # the dataset holds its own copy
    assert len(data) == 10 and len(data.batches) == 2
    assert data.batches[1]["obs"][0, 0] == 100 and data.batches[0]["obs"][0, 0] == 0
    np.testing.assert_array_equal(data.labels[0], np.ones(6))
    np.testing.assert_allclose(data.labels[1], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(data.newest()["labels"], [0.1, 0.2, 0.3, 0.4])
    assert data.newest()["obs"][0, 0] == 100


def test_all_concatenates_in_order_and_upto():
    data = DeploymentDataset(OBS, ACT)
    data.add(batch(6, 0))
    data.add(batch(4, 100), labels=np.full(4, 0.5))
    everything = data.all()
    np.testing.assert_array_equal(everything["obs"][:, 0], [0, 1, 2, 3, 4, 5, 100, 101, 102, 103])
    np.testing.assert_allclose(everything["labels"], [1] * 6 + [0.5] * 4)
    assert everything["terminated"].dtype == bool and everything["act"].shape == (10, ACT)
    first = data.all(upto=1)
    assert len(first["obs"]) == 6 and first["labels"].tolist() == [1] * 6
    assert data.all() is everything                 # cached ...
    data.add(batch(2, 200))
    assert len(data.all()["obs"]) == 12             # ... and refreshed by add
    with pytest.raises(IndexError):
        data.all(upto=4)


def test_start_states():
    data = DeploymentDataset(OBS, ACT)
    data.add(batch(6, 0))                           # episodes start at rows 0 and 4
    data.add(batch(5, 100))                         # rows 0 and 4
    np.testing.assert_array_equal(data.start_states()[:, 0], [0, 4, 100, 104])
    np.testing.assert_array_equal(data.start_states("episode_starts")[:, 0], [0, 4, 100, 104])
    assert len(data.start_states("all_states")) == 11
    with pytest.raises(ValueError):
        data.start_states("random")


def test_add_validates_shapes():
    data = DeploymentDataset(OBS, ACT)
    bad = batch(4, 0)
    bad["act"] = np.zeros((4, ACT + 1), np.float32)
    with pytest.raises(ValueError):
        data.add(bad)
    with pytest.raises(ValueError):
        data.add(batch(4, 0), labels=np.ones(3))
    missing = batch(4, 0)
    del missing["episode_start"]
    with pytest.raises(KeyError):
        data.add(missing)
    assert len(data) == 0


def test_holdout_is_the_last_15_percent_of_each_batch_fixed_on_arrival():
    """BREMEN's split (path_collection.py:54-70): the first int(0.85 n) rows of each batch train,
    the rest validate; a later batch does not move an earlier batch's rows."""
    import torch
    data = DeploymentDataset(OBS, ACT)
    data.add(batch(20, 0))
    data.add(batch(10, 100), labels=np.linspace(0, 1, 10, dtype=np.float32))
    train, hold = data.split("batch_tail", 0.15)
    assert hold["obs"][:, 0].tolist() == [17, 18, 19, 108, 109]       # int(17.0) = 17, int(8.5) = 8
    assert len(train["obs"]) == 25 and 17 not in train["obs"][:, 0]
    np.testing.assert_allclose(hold["labels"], [1, 1, 1, 8 / 9, 1])   # labels travel with their rows
    data.add(batch(40, 1000))
    _, hold = data.split("batch_tail", 0.15)
    assert hold["obs"][:5, 0].tolist() == [17, 18, 19, 108, 109] and hold["obs"][5:, 0].tolist() == list(range(1034, 1040))
    _, newest = data.split("batch_tail", 0.15, newest_only=True)
    assert newest["obs"][:, 0].tolist() == list(range(1034, 1040))
    # the old split: a random share of D_all, capped, redrawn per call from the generator
    tr, ho = data.split("random", 0.2, torch.Generator().manual_seed(0), holdout_max=5)
    assert len(ho["obs"]) == 5 and len(tr["obs"]) == 65
    _, again = data.split("random", 0.2, torch.Generator().manual_seed(0), holdout_max=5)
    np.testing.assert_array_equal(again["obs"], ho["obs"])
    with pytest.raises(ValueError, match="batch_tail"):
        data.split("tail", 0.15)
