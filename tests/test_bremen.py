"""What makes BREMEN BREMEN: behaviour cloning of the newest batch only from fresh weights,
fixed-std exploration, a warm-started L2-penalised ensemble, plain TRPO with one member per step."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import algos.bremen as bremen_module
from algos.bremen import BREMEN
from algos.config import resolve_run_config
from algos.core.dataset import DeploymentDataset
from envs.collector import collect

OBS, ACT = 17, 6


def make(*overrides):
    cfg = resolve_run_config("smoke", "bremen", "halfcheetah", "500k", 0, list(overrides))
    return BREMEN("halfcheetah", cfg, OBS, ACT, torch.device("cpu"), 0)


def two_batches():
    dataset = DeploymentDataset(OBS, ACT)
    dataset.add(collect("halfcheetah", 300, None, seed=1, max_episode_steps=100))
    dataset.add(collect("halfcheetah", 200, None, seed=2, max_episode_steps=100))
    return dataset


def capture(monkeypatch, algo, dataset):
    seen = {}
    monkeypatch.setattr(bremen_module, "clone_policy",
                        lambda policy, data, weights, cfg, gen: seen.update(bc_obs=data["obs"], bc_weights=weights,
                                                                          policy=policy))
    monkeypatch.setattr(bremen_module, "train_in_model",
                        lambda *args, **kw: seen.update(member_choice=args[5], n_args=len(args)))
    monkeypatch.setattr(bremen_module, "fit_ensemble",
                        lambda model, data, section, gen, weight_decay=0.0: seen.update(model=model, wd=weight_decay))
    algo.train(dataset, 2, lambda phase: nullcontext())
    return seen


def test_bc_on_the_newest_batch_only_with_fresh_policy_and_unit_weights(monkeypatch):
    algo = make()
    dataset = two_batches()
    old_policy = algo.policy
    seen = capture(monkeypatch, algo, dataset)
    np.testing.assert_array_equal(seen["bc_obs"], dataset.newest()["obs"])
    np.testing.assert_array_equal(seen["bc_weights"], np.ones(200))
    assert seen["policy"] is not old_policy                  # re-initialised each deployment
    seen = capture(monkeypatch, make("bremen.bc_newest_batch_only=false"), dataset)
    assert len(seen["bc_obs"]) == 500


def test_model_is_warm_started_with_the_l2_penalty_and_trpo_is_plain_per_step(monkeypatch):
    algo = make()
    model = algo.dynamics
    seen = capture(monkeypatch, algo, two_batches())
    assert seen["model"] is model and seen["wd"] == pytest.approx(1e-4)
    assert seen["member_choice"] == "per_step" and seen["n_args"] == 7   # no label_fn: plain TRPO
    seen = capture(monkeypatch, make("bremen.warm_start=false"), two_batches())
    assert seen["model"] is not model


def test_exploration_is_mean_plus_fixed_std_noise():
    algo = make()
    assert algo.collection_policy(1) is None
    with torch.no_grad():
        algo.policy.log_std.fill_(1.0)                       # the policy's own std must not matter
    policy = algo.collection_policy(2)
    obs = np.zeros((1, OBS), np.float32)
    mean = algo.policy.numpy_policy("deterministic", clip=False)(obs)
    noise = np.concatenate([policy(obs) - mean for _ in range(3000)])
    np.testing.assert_allclose(noise.std(), 0.1, rtol=0.06)
