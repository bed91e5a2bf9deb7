"""What makes BREMEN BREMEN: behaviour cloning of the newest batch only from fresh weights,
fixed-std exploration, a warm-started L2-penalised ensemble, plain TRPO with one member per step."""
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import algos.bremen as bremen_module
from algos.bremen import BREMEN
from algos.config import resolve_run_config
from algos.core.dataset import DeploymentDataset
from algos.core.ensemble import DynamicsEnsemble
from algos.core.model_trpo import make_policy, train_in_model, trpo_sampler
from algos.core.scalars import Scalars
from envs import get_spec, model_reward
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
                        lambda policy, train, cfg, gen, **kw: seen.update(bc_obs=train["obs"], bc_kw=kw, policy=policy))
    monkeypatch.setattr(bremen_module, "train_in_model",
                        lambda *args, **kw: seen.update(member_choice=args[5], n_args=len(args), trpo_kw=kw))
    monkeypatch.setattr(bremen_module, "fit_ensemble",
                        lambda model, *args, weight_decay=0.0, **kw: seen.update(model=model, wd=weight_decay))
    algo.train(dataset, 2, lambda phase: nullcontext())
    return seen


def test_bc_on_the_newest_batch_only_with_fresh_policy(monkeypatch):
    algo = make()
    dataset = two_batches()
    old_policy = algo.policy
    seen = capture(monkeypatch, algo, dataset)
    np.testing.assert_array_equal(seen["bc_obs"], dataset.newest()["obs"])
    assert not seen["bc_kw"].get("weighted", False)             # plain BC: unit weights
    assert seen["policy"] is not old_policy                  # re-initialised each deployment
    previous, states = seen["bc_kw"]["handoff"]              # handoff_gap: from the policy that collected B(2)
    np.testing.assert_array_equal(states, dataset.newest()["obs"])
    assert all(torch.equal(a, b) for a, b in zip(previous.state_dict().values(), old_policy.state_dict().values()))
    seen = capture(monkeypatch, make("bremen.bc_newest_batch_only=false"), dataset)
    assert len(seen["bc_obs"]) == 500


def test_model_is_warm_started_and_trpo_is_plain_per_step_with_bremens_reward(monkeypatch):
    algo = make()
    model = algo.dynamics
    seen = capture(monkeypatch, algo, two_batches())
    assert seen["model"] is model
    assert seen["member_choice"] == "per_step" and seen["n_args"] == 7   # no label_fn: plain TRPO
    assert seen["trpo_kw"] == {"scalars": algo.scalars, "reward_velocity_from": "bremen_code"}
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


# ---------------------------------------------------------------- BREMEN's official-code defaults
def test_defaults_follow_bremens_code():
    cfg = make().cfg
    assert cfg["policy"]["log_std"] == "state_dependent"
    assert (cfg["policy"]["min_log_std"], cfg["policy"]["max_log_std"]) == (-5.0, 0.0)
    t = cfg["trpo"]
    assert (t["line_search"], t["bootstrap_cutoff"]) == ("bremen", False)
    assert (t["sample_noise"], t["sample_std"]) == ("fixed", 0.1)
    assert (t["baseline_normalize_obs"], t["baseline_time_scale"]) == (True, 100.0)
    assert cfg["bremen"]["model_reward_velocity_from"] == "bremen_code"
    algo = make()
    assert algo.policy.state_dependent
    assert not make("policy.log_std=global").policy.state_dependent


def test_trpo_samples_with_fixed_noise_but_scores_with_the_policy_std():
    algo = make()
    policy = algo.policy
    with torch.no_grad():
        policy.log_std.fill_(-100.0)                 # the policy's own std at its floor, e^-5
    obs = torch.zeros(20000, OBS)
    noise = torch.randn(20000, ACT, generator=torch.Generator().manual_seed(0))
    mean = policy.mean_action(obs)
    fixed = trpo_sampler(policy, algo.cfg["trpo"])(obs, noise) - mean
    assert torch.allclose(fixed.std(0), torch.full((ACT,), 0.1), rtol=0.05)
    own = trpo_sampler(policy, {**algo.cfg["trpo"], "sample_noise": "policy"})(obs, noise) - mean
    assert torch.allclose(own.std(0), torch.full((ACT,), math.exp(-5.0)), rtol=0.05)
    # the likelihood ratio is scored with the policy's std: an action 0.1 off the mean is ~20 sigmas out
    log_prob = float(policy.log_prob(obs[:1], mean[:1] + 0.1).detach())
    z = 0.1 / math.exp(-5.0)
    assert log_prob == pytest.approx(ACT * (-0.5 * z * z + 5.0 - 0.5 * math.log(2 * math.pi)), rel=1e-4)
    with pytest.raises(ValueError, match="trpo.sample_noise"):
        trpo_sampler(policy, {**algo.cfg["trpo"], "sample_noise": "gaussian"})


@pytest.mark.parametrize("env, vel, z", [("halfcheetah", 8, None), ("ant", 13, 0), ("cheetah-run", 8, None),
                                         ("hopper", 5, None), ("walker2d", 8, None)])
def test_model_reward_reads_the_velocity_state_bremens_code_reads(env, vel, z):
    """BREMEN's reward functions read s for HalfCheetah, Ant, Cheetah-Run and s' for Hopper, Walker2d."""
    spec = get_spec(env)
    obs, next_obs = np.zeros((1, spec.obs_dim)), np.zeros((1, spec.obs_dim))
    obs[0, vel], next_obs[0, vel] = 2.0, 4.0
    if z is not None:
        obs[0, z], next_obs[0, z] = 0.57, 1.57      # Ant's height cost: 0 at s, -3 at s'
    act = np.zeros((1, spec.act_dim))
    from_s = model_reward(env, obs, act, next_obs, velocity_from="obs")
    from_s2 = model_reward(env, obs, act, next_obs, velocity_from="next_obs")
    run = (lambda x: min(x / 10.0, 1.0)) if env == "cheetah-run" else (lambda x: x + spec.alive_bonus)
    assert from_s[0] == pytest.approx(run(2.0))
    assert from_s2[0] == pytest.approx(run(4.0) - (3.0 if z is not None else 0.0))
    bremen = model_reward(env, obs, act, next_obs, velocity_from="bremen_code")
    assert bremen[0] == (from_s if env in ("halfcheetah", "ant", "cheetah-run") else from_s2)[0]
    with pytest.raises(ValueError, match="velocity_from"):
        model_reward(env, obs, act, next_obs, velocity_from="s")


def test_train_in_model_records_diagnostics_per_iteration():
    cfg = resolve_run_config("smoke", "bremen", "halfcheetah", "500k", 0,
                             ["trpo.iterations=3", "trpo.rollout_length=10", "trpo.transitions_per_iteration=80"])
    torch.manual_seed(0)
    dynamics = DynamicsEnsemble(OBS, ACT, members=2, hidden=(16,))
    policy = make_policy(cfg, OBS, ACT, torch.device("cpu"))
    starts = np.random.default_rng(0).standard_normal((20, OBS)).astype(np.float32)
    scalars = Scalars()
    train_in_model(policy, dynamics, starts, None, cfg, "per_step", torch.Generator().manual_seed(0),
                   scalars=scalars, reward_velocity_from="bremen_code")
    rows = {(r["name"], r["step"]): r["value"] for r in scalars.rows}
    names = {"kl", "step_fraction", "line_search_accepted", "line_search_backtracks", "surrogate_improvement",
             "expected_improvement", "policy_std", "live_samples", "mean_reward", "mean_reward_x_horizon"}
    assert names <= {name for name, _ in rows}
    assert {step for _, step in rows} == {0, 1, 2}
    assert all(r["phase"] == "policy" for r in scalars.rows)
    for step in range(3):
        assert rows[("live_samples", step)] == 80                   # 8 lanes x 10 steps, all real
        assert rows[("mean_reward_x_horizon", step)] == pytest.approx(10 * rows[("mean_reward", step)])
        assert 0 < rows[("policy_std", step)] <= 1.0
        accepted = rows[("line_search_accepted", step)]
        assert rows[("step_fraction", step)] == (0.5 ** rows[("line_search_backtracks", step)] if accepted else 0.0)
    with pytest.raises(ValueError, match="velocity_from"):
        train_in_model(policy, dynamics, starts, None, cfg, "per_step", torch.Generator().manual_seed(0),
                       reward_velocity_from="s_prime")
