"""MUSBO's own equations (eqs. 9, 11, 12, 13, 22) on hand-checkable inputs."""
import io

import numpy as np
import pytest
import torch

import algos.musbo as musbo_module
from algos.config import resolve_run_config
from algos.core.dataset import DeploymentDataset
from algos.core.ensemble import Prediction
from algos.core.training import ModelTrainer, Patience
from algos.musbo import MUSBO
from envs.collector import collect

OBS, ACT = 17, 6


def make(*overrides, env="halfcheetah"):
    cfg = resolve_run_config("smoke", "musbo", env, "500k", 0, list(overrides))
    return MUSBO(env, cfg, OBS, ACT, torch.device("cpu"), 0)


def fake_labeler(algo, member_offsets):
    """The labeler's K members predict s' + offset_k along state dimension 0."""
    offsets = torch.tensor(member_offsets, dtype=torch.float32)

    def predict(obs, act, member=None):
        obs = torch.as_tensor(obs, dtype=torch.float32)
        mu = obs.expand(len(offsets), -1, -1).clone()
        mu[:, :, 0] += offsets[:, None]
        return Prediction(mu, None, None)

    algo.labeler.predict = predict
    algo.labeler_ready = True


def batch_with_next_obs_equal_obs(n=4):
    obs = np.random.default_rng(0).normal(size=(n, OBS)).astype(np.float32)
    return {"obs": obs, "act": np.zeros((n, ACT), np.float32), "next_obs": obs.copy()}


def test_eq9_labels_of_the_first_batch_are_one():
    algo = make()
    assert not algo.labeler_ready
    np.testing.assert_array_equal(algo.label_batch(batch_with_next_obs_equal_obs(), 1), np.ones(4))


def test_eq9_default_reading_takes_the_largest_error_of_the_members():
    algo = make("musbo.eq9_distance=raw")
    fake_labeler(algo, [0.1, 0.5, 0.3])           # squared errors 0.01, 0.25, 0.09
    labels = algo.label_batch(batch_with_next_obs_equal_obs(), 2)
    np.testing.assert_allclose(labels, 1 - 0.25, rtol=1e-6)
    fake_labeler(algo, [0.1, 2.0, 0.3])           # error 4 is clipped to 1
    np.testing.assert_allclose(algo.label_batch(batch_with_next_obs_equal_obs(), 2), 0.0, atol=1e-7)


def test_eq9_typeset_reading_takes_the_best_member():
    algo = make("musbo.label_reading=max_label", "musbo.eq9_distance=raw")
    fake_labeler(algo, [0.1, 0.5, 0.3])
    np.testing.assert_allclose(algo.label_batch(batch_with_next_obs_equal_obs(), 2), 1 - 0.01, rtol=1e-6)


def unit_std_but_dim0(algo, std0):
    """The labeler's target std: 1 on every state dim but dim 0 (where the fake members differ)."""
    algo.labeler.target_norm.std.fill_(1.0)
    algo.labeler.target_norm.std[0] = std0


@pytest.mark.parametrize("reading, expected", [
    ("raw", 1 - 0.25),                  # max_k error: 0.5^2 in raw units
    ("std_sum", 1 - 0.25 / 4),          # (0.5 / 2)^2: dim 0's std is 2
    ("std_mean", 1 - 0.25 / 4 / OBS),   # averaged over the 17 state dims
])
def test_eq9_distance_readings(reading, expected):
    algo = make(f"musbo.eq9_distance={reading}")
    fake_labeler(algo, [0.1, 0.5, 0.3])
    unit_std_but_dim0(algo, 2.0)
    labels = algo.label_batch(batch_with_next_obs_equal_obs(), 2)
    np.testing.assert_allclose(labels, expected, rtol=1e-6)
    recorded = {r["name"]: r["value"] for r in algo.scalars.rows if r["phase"] == "labels"}
    assert recorded["eq9_mean"] == pytest.approx(expected, rel=1e-6) and recorded["eq9_share_at_0"] == 0.0


@pytest.mark.parametrize("reading, distance", [("raw", 1.0), ("std_sum", 0.25), ("std_mean", 0.25 / OBS)])
def test_eq12_distance_readings(reading, distance):
    algo = make(f"musbo.eq12_distance={reading}")
    fake_labeler(algo, [0.0, 1.0])                # members differ by 1 on dim 0, whose std is 2
    unit_std_but_dim0(algo, 2.0)
    labels = algo.imagined_labels(torch.zeros(10, OBS), torch.zeros(10, ACT), torch.Generator().manual_seed(0))
    np.testing.assert_allclose(labels.numpy(), np.exp(-0.028 * distance), rtol=1e-6)


def spread_labeler(algo):
    """Members whose disagreement grows with |s_0|: distances spread over orders of magnitude."""
    def predict(obs, act, member=None):
        obs = torch.as_tensor(obs, dtype=torch.float32)
        mu = obs.expand(3, -1, -1).clone()
        mu[:, :, 0] += torch.tensor([0.0, 1.0, 2.5])[:, None] * obs[:, 1].abs()
        return Prediction(mu, None, None)
    algo.labeler.predict = predict
    algo.labeler_ready = True
    algo.labeler.target_norm.std.fill_(1.0)


def test_eq12_alpha_calibrated_gives_the_first_batch_median_label_one_half_then_stays():
    algo = make("musbo.eq12_alpha=calibrated")
    spread_labeler(algo)
    first = torch.randn(4001, OBS, generator=torch.Generator().manual_seed(1)) * 3
    gen = torch.Generator().manual_seed(0)
    labels = algo.imagined_labels(first, torch.zeros(len(first), ACT), gen)
    assert float(labels.median()) == pytest.approx(0.5, abs=1e-6)                      # 4001 rows: one middle
    alpha = algo.eq12_alpha
    assert alpha != pytest.approx(0.028) and alpha > 0
    recorded = [r for r in algo.scalars.rows if r["name"] == "eq12_alpha"]
    assert [(r["phase"], r["step"], r["value"]) for r in recorded] == [("policy", 0, alpha)]
    # later batches of the deployment (other states, wider disagreement) keep alpha: median != 0.5
    later = algo.imagined_labels(first * 4, torch.zeros(len(first), ACT), gen)
    assert algo.eq12_alpha == alpha and float(later.median()) < 0.3
    assert len([r for r in algo.scalars.rows if r["name"] == "eq12_alpha"]) == 1
    # the exploration of eq. 22 uses the deployment's alpha, and it survives a checkpoint
    assert algo.collection_policy(2).alpha == alpha
    buffer = io.BytesIO()
    torch.save(algo.state_dict(), buffer)
    restored = make("musbo.eq12_alpha=calibrated")
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))  # as algos/rundir.py
    assert restored.eq12_alpha == alpha


def test_eq12_alpha_is_recalibrated_at_each_deployments_trpo_and_paper_keeps_0_028(monkeypatch):
    algo = make("musbo.eq12_alpha=calibrated")
    dataset = small_dataset(algo)
    alphas = []

    def fake_trpo(*args, **kwargs):  # two imagined batches per TRPO, the first sets alpha
        label_fn = args[-1]
        for scale in (1.0, 5.0):
            label_fn(torch.randn(501, OBS, generator=torch.Generator().manual_seed(len(alphas))) * scale,
                     torch.zeros(501, ACT))
        alphas.append(algo.eq12_alpha)
    monkeypatch.setattr(musbo_module, "clone_policy", lambda *args, **kwargs: None)
    monkeypatch.setattr(musbo_module, "train_in_model", fake_trpo)
    from contextlib import nullcontext
    for deployment in (1, 2):
        algo.train(dataset, deployment, lambda phase: nullcontext())
    assert alphas[0] != alphas[1]                       # one alpha per deployment, from its own first batch
    assert [r["value"] for r in algo.scalars.rows if r["name"] == "eq12_alpha"] == alphas
    paper = make()
    assert paper.m["eq12_alpha"] == "paper" and paper.eq12_alpha == 0.028
    spread_labeler(paper)
    paper.imagined_labels(torch.randn(100, OBS), torch.zeros(100, ACT), torch.Generator().manual_seed(0))
    assert paper.eq12_alpha == 0.028 and not [r for r in paper.scalars.rows if r["name"] == "eq12_alpha"]


def test_eq12_alpha_calibration_refuses_a_zero_median_distance():
    algo = make("musbo.eq12_alpha=calibrated")
    fake_labeler(algo, [0.0, 0.0, 0.0])               # members agree exactly: no alpha gives 0.5
    with pytest.raises(RuntimeError, match="median distance of the first imagined batch is 0.0.*musbo.eq12_alpha=paper"):
        algo.imagined_labels(torch.zeros(10, OBS), torch.zeros(10, ACT), torch.Generator().manual_seed(0))


def test_eq12_alpha_calibrated_needs_the_eq12_labels_of_trpo():
    from algos.config import ConfigError
    with pytest.raises(ConfigError, match="musbo.eq12_alpha=calibrated sets alpha from TRPO's eq. 12 labels"):
        make("musbo.eq12_alpha=calibrated", "musbo.uncertainty_weighting=false")
    make("musbo.eq12_alpha=calibrated", "musbo.uncertainty_weighting=false", "musbo.exploration_noise=none")
    resolve_run_config("smoke", "bremen", "hopper", "500k", 0,
                       ["musbo.eq12_alpha=calibrated", "musbo.uncertainty_weighting=false"])  # not MUSBO: unused


def test_defaults_are_the_readings_the_rule_picked():
    """docs/paper_to_code.md, "Readings": eq. 9 std_mean, eq. 22 sigma (as typeset); eq. 12 raw (as
    written) and alpha paper, the rule re-applied at imagined states."""
    m = make().m
    assert (m["eq9_distance"], m["eq12_distance"], m["eq22_reading"]) == ("std_mean", "raw", "sigma")
    assert (m["eq12_alpha"], m["alpha"]) == ("paper", 0.028)


def test_label_distance_numpy_and_torch_agree():
    diff = np.array([[3.0, 4.0], [1.0, -1.0]])
    inv_std = np.array([1.0, 0.5])
    for reading, expected in [("raw", [25.0, 2.0]), ("std_sum", [13.0, 1.25]), ("std_mean", [6.5, 0.625])]:
        np.testing.assert_allclose(musbo_module.label_distance(diff, reading, inv_std), expected)
        np.testing.assert_allclose(musbo_module.label_distance(torch.tensor(diff), reading, torch.tensor(inv_std)).numpy(),
                                   expected)
    with pytest.raises(ValueError, match="choose raw, std_sum or std_mean"):
        musbo_module.label_distance(diff, "normalized", inv_std)


def test_eq12_is_the_disagreement_of_two_different_members():
    algo = make("musbo.eq12_distance=raw")
    fake_labeler(algo, [0.0, 1.0])                # K = 2: k != l forces the pair (0, 1)
    obs = torch.zeros(1000, OBS)
    labels = algo.imagined_labels(obs, torch.zeros(1000, ACT), torch.Generator().manual_seed(0))
    np.testing.assert_allclose(labels.numpy(), np.exp(-0.028 * 1.0), rtol=1e-6)
    fake_labeler(algo, [0.0, 1.0, 3.0])           # K = 3: never the same member twice (label 1)
    labels = algo.imagined_labels(obs, torch.zeros(1000, ACT), torch.Generator().manual_seed(0)).numpy()
    possible = np.exp(-0.028 * np.array([1.0, 9.0, 4.0]))
    assert np.all(np.min(np.abs(labels[:, None] - possible[None]), axis=1) < 1e-6)
    assert len(np.unique(labels.round(6))) == 3 and np.all(labels < 1)


@pytest.mark.parametrize("mode, u, expected_std", [
    ("eq22", 0.5, np.hypot(0.01, 0.5)),           # sigma = U: more noise where U is high (as written)
    ("one_minus_u", 0.9, np.hypot(0.01, 0.1)),    # sigma = 1 - U
    ("none", 0.5, 0.01),                          # only the constant noise eps_c
    ("eq22/variance", 0.25, np.hypot(0.01, 0.5)),     # the text: variance = U, std = sqrt(0.25)
    ("one_minus_u/variance", 0.75, np.hypot(0.01, 0.5)),
])
def test_eq22_exploration_noise(mode, u, expected_std):
    mode, _, reading = mode.partition("/")
    algo = make(f"musbo.exploration_noise={mode}", f"musbo.eq22_reading={reading or 'sigma'}")
    algo.labeler_ready = True
    policy = algo.collection_policy(2)
    policy.labels = lambda obs, act: np.full(len(obs), u)
    obs = np.zeros((1, OBS), np.float32)
    mean = algo.policy.numpy_policy("deterministic", clip=False)(obs)
    noise = np.concatenate([policy(obs) - mean for _ in range(4000)])
    np.testing.assert_allclose(noise.std(), expected_std, rtol=0.06)
    assert abs(noise.mean()) < 4 * expected_std / np.sqrt(noise.size)
    summary = policy.summary()                    # what MUSBO records when the batch arrives
    expected_noise = 0.0 if mode == "none" else np.sqrt(expected_std ** 2 - 0.01 ** 2)
    assert summary["eq22_noise_std_mean"] == pytest.approx(expected_noise, rel=1e-6)
    assert algo.collection_policy(1) is None     # deployment 1: uniform random actions


def test_exploration_noise_and_clipping_are_recorded_when_the_batch_arrives():
    algo = make()
    fake_labeler(algo, [0.0, 1.0])
    policy = algo.collection_policy(2)
    policy.labels = lambda obs, act: np.full(len(obs), 1.0)   # sigma = 1: about 32 % of |N(0, 1)| exceed 1
    for _ in range(2000):
        policy(np.zeros((1, OBS), np.float32))
    algo.label_batch(batch_with_next_obs_equal_obs(), 2)
    recorded = {r["name"]: r["value"] for r in algo.scalars.rows if r["phase"] == "exploration"}
    assert recorded["eq22_noise_std_mean"] == pytest.approx(1.0)
    assert recorded["eq22_clipped_share"] == pytest.approx(0.317, abs=0.03)
    algo.label_batch(batch_with_next_obs_equal_obs(), 3)      # recorded once, for the batch it produced
    assert sum(r["phase"] == "exploration" for r in algo.scalars.rows) == 2


@pytest.mark.parametrize("space", ["raw", "std_sum", "std_mean"])
def test_exploration_labels_are_eq12_of_the_labeler(space):
    """The exploration's numpy eq. 12 equals MUSBO.imagined_labels (the torch path of TRPO).
    K = 2 makes the pair (k, l) irrelevant (the distance is symmetric), so the two agree exactly."""
    algo = make("labeler.members=2", f"musbo.eq12_distance={space}")
    batch = collect("halfcheetah", 300, None, seed=1, max_episode_steps=100)
    ModelTrainer(lr=1e-3, batch_size=256).fit(algo.labeler, batch, None, Patience(3, max_epochs=2),
                                              torch.Generator().manual_seed(0))
    algo.labeler_ready = True
    obs, act = batch["obs"][:50], np.clip(batch["act"][:50] * 1.5, -1, 1)
    expected = algo.imagined_labels(torch.as_tensor(obs), torch.as_tensor(act), torch.Generator().manual_seed(0))
    got = algo.collection_policy(2).labels(obs, act)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4)
    assert got.std() > 0  # not a constant: the members disagree by different amounts


def _train_capturing(monkeypatch, algo, dataset):
    seen = {}
    monkeypatch.setattr(musbo_module, "clone_policy", lambda policy, train, cfg, gen, **kw: seen.update(
        bc_labels=np.concatenate([train["labels"], kw["holdout"]["labels"]]), bc_weighted=kw["weighted"]))
    monkeypatch.setattr(musbo_module, "train_in_model",
                        lambda *args, **kwargs: seen.update(label_fn=args[-1], member_choice=args[5], **kwargs))
    from contextlib import nullcontext
    algo.train(dataset, 2, lambda phase: nullcontext())
    return seen


def small_dataset(algo):
    dataset = DeploymentDataset(OBS, ACT)
    for i in (1, 2):
        batch = collect("halfcheetah", 300, None, seed=i, max_episode_steps=100)
        dataset.add(batch, algo.label_batch(batch, i) if i == 1 else np.linspace(0, 1, 300, dtype=np.float32))
    return dataset


def test_eq11_and_eq13_use_the_labels_and_the_switch_removes_them(monkeypatch):
    algo = make()
    dataset = small_dataset(algo)
    seen = _train_capturing(monkeypatch, algo, dataset)
    assert seen["bc_weighted"]                                                   # eq. 11 weights = U kept from arrival
    np.testing.assert_array_equal(np.sort(seen["bc_labels"]), np.sort(dataset.all()["labels"]))
    assert seen["label_fn"] is not None and seen["member_choice"] == "per_iteration"   # eq. 12 weights in eq. 13
    assert seen["scalars"] is algo.scalars        # TRPO records its per-iteration scalars into the run's table
    algo = make("musbo.uncertainty_weighting=false")
    seen = _train_capturing(monkeypatch, algo, small_dataset(algo))
    assert not seen["bc_weighted"]
    assert seen["label_fn"] is None


def test_labeler_trained_on_earlier_batches_labels_the_new_one():
    algo = make()
    dataset = DeploymentDataset(OBS, ACT)
    first = collect("halfcheetah", 300, None, seed=1, max_episode_steps=100)
    dataset.add(first, algo.label_batch(first, 1))
    from contextlib import nullcontext
    algo.train(dataset, 1, lambda phase: nullcontext())
    assert algo.labeler_ready
    second = collect("halfcheetah", 300, algo.collection_policy(2), seed=2, max_episode_steps=100)
    labels = algo.label_batch(second, 2)
    assert labels.shape == (300,) and np.all((0 <= labels) & (labels <= 1)) and labels.min() < 1
