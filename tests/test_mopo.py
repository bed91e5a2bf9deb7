"""MOPO adapted to deployments (algos/mopo.py, spec/BASELINES.md "MOPO"): the uncertainty
penalty r~ = r^ - lambda max_i ||sigma_i|| (and its Frobenius switch), elites, rollouts that
stop at termination, the real/model mix of SAC batches, and the algorithm interface end to
end for two deployments, with a state_dict that survives torch.load(weights_only=True)."""
import contextlib
import copy
import io
import math

import numpy as np
import pytest
import torch

import algos.mopo as mopo_module
import envs
from algos.config import load_profile
from algos.core.dataset import DeploymentDataset
from algos.core.ensemble import DynamicsEnsemble, Prediction
from algos.core.sac import TanhGaussianActor
from algos.mopo import MOPO, model_rollout, penalised_model_step, uncertainty_penalty


def tiny_cfg(**mopo_overrides) -> dict:
    """The smoke profile's run config, shrunk further; every MOPO key comes from the profile."""
    cfg = copy.deepcopy(load_profile("smoke")["run"]["defaults"])
    cfg["mopo"].update(hidden=[16, 16], weight_decay=[2.5e-5, 5.0e-5, 1.0e-4], members=4, elites=2,
                       max_epochs=3, horizon=3, rollout_every=10, rollout_batch=32, sac_steps=25,
                       sac_hidden=[16, 16], sac_batch_size=32, model_retain_epochs=2)
    cfg["mopo"].update(mopo_overrides)
    return cfg


# ---------------------------------------------------------------- the penalty
def prediction(means, stds, reward_means, reward_stds):
    """A Prediction of M members for N rows; obs part [M, N, d], reward part [M, N]."""
    t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    return Prediction(next_obs=t(means), reward=t(reward_means), next_obs_std=t(stds), reward_std=t(reward_stds))


def test_penalty_hand_example_max_std_norm_and_frobenius():
    # member 0: sigma = (3, 4) -> ||sigma|| = 5, ||diag(sigma^2)||_F = sqrt(9^2 + 16^2) = sqrt(337)
    # member 1: sigma = (1, 0) -> 1 and 1
    std = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
    assert uncertainty_penalty(std, "max_std_norm").tolist() == [5.0]
    assert math.isclose(uncertainty_penalty(std, "frobenius").item(), math.sqrt(337), rel_tol=1e-6)
    # both forms agree where every sigma is the same 1-vector of length D: sqrt(D) both
    ones = torch.ones(3, 2, 4)
    torch.testing.assert_close(uncertainty_penalty(ones, "frobenius"), uncertainty_penalty(ones, "max_std_norm"))
    with pytest.raises(ValueError, match="mopo.penalty"):
        uncertainty_penalty(std, "mean")


@pytest.mark.parametrize("kind, u", [("max_std_norm", 5.0), ("frobenius", math.sqrt(337))])
def test_penalised_reward_is_reward_minus_lambda_max_over_all_members(kind, u):
    """r~ = r^ - lambda u(s, a); the max runs over ALL members: member 0 (not an elite) has the
    largest sigma and sets the penalty. sigma of [delta s, r] includes the reward's sigma
    (MOPO's code takes the norm over the whole output)."""
    pred = prediction(means=[[[0.0]], [[0.0]]], stds=[[[3.0]], [[1e-4]]],
                      reward_means=[[7.0], [2.0]], reward_stds=[[4.0], [0.0]])
    step = penalised_model_step(pred, torch.tensor([1]), kind, 0.5, torch.Generator().manual_seed(0))
    assert step["member"].tolist() == [1]
    assert math.isclose(step["raw_reward"].item(), 2.0)        # elite 1's reward, sigma 0
    assert math.isclose(step["penalty"].item(), u, rel_tol=1e-5)
    assert math.isclose(step["reward"].item(), 2.0 - 0.5 * u, rel_tol=1e-5)


def test_next_states_and_rewards_come_only_from_elites_sampled_from_their_gaussian():
    M, N = 5, 4000
    means = torch.arange(M, dtype=torch.float32).mul(100.0).reshape(M, 1, 1).expand(M, N, 1)
    pred = prediction(means, torch.ones(M, N, 1), means[..., 0], torch.ones(M, N))
    elites = torch.tensor([1, 3])
    step = penalised_model_step(pred, elites, "max_std_norm", 0.0, torch.Generator().manual_seed(0))
    chosen = torch.round(step["next_obs"][:, 0] / 100).long()
    assert set(chosen.tolist()) == {1, 3} and torch.equal(chosen, step["member"])
    assert 0.45 < (step["member"] == 1).float().mean() < 0.55        # uniform over the elites
    noise = step["next_obs"][:, 0] - 100.0 * step["member"]
    assert 0.9 < noise.std() < 1.1                                   # s' ~ N(mu_k, sigma_k^2), not mu_k
    torch.testing.assert_close(step["reward"], step["raw_reward"])   # lambda = 0


# ---------------------------------------------------------------- rollouts
def test_rollouts_stop_at_termination():
    """A rollout whose transition terminates stores it with terminated=1 and is not stepped
    again; the survivors continue from their next states."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(3, 2, members=3, hidden=[8], probabilistic=True, activation="swish",
                             reward_target=True, learn_logvar_bounds=True)
    model.elites = torch.tensor([0, 2])
    actor = TanhGaussianActor(3, 2, [8])
    calls = []

    def termination(obs, act, next_obs):  # the first half of the rollouts ends at step 1
        calls.append(len(obs))
        done = torch.zeros(len(obs), dtype=torch.bool)
        if len(calls) == 1:
            done[: len(obs) // 2] = True
        return done

    out = model_rollout(model, actor, torch.randn(10, 3), 4, termination, "max_std_norm", 1.0,
                        torch.Generator().manual_seed(0))
    assert calls == [10, 5, 5, 5]
    assert len(out["obs"]) == 10 + 3 * 5
    assert out["terminated"][:10].tolist() == [True] * 5 + [False] * 5
    assert not out["terminated"][10:].any()
    torch.testing.assert_close(out["obs"][10:15], out["next_obs"][5:10])  # survivors continue

    calls.clear()
    out = model_rollout(model, actor, torch.randn(10, 3), 4, lambda s, a, s2: torch.ones(len(s), dtype=torch.bool),
                        "max_std_norm", 1.0, torch.Generator().manual_seed(0))
    assert len(out["obs"]) == 10 and out["terminated"].all()


# ---------------------------------------------------------------- end to end
ENV, OBS, ACT = "hopper", 11, 3  # hopper: model_termination is active


def fake_collect(policy, n, seed, episode_len=40):
    """A stand-in for envs.collector.collect on a toy linear system (episodes of episode_len)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(123).normal(size=(ACT, OBS)).astype(np.float32) * 0.1
    keys = ("obs", "act", "rew", "next_obs", "terminated", "truncated", "episode_start")
    out = {k: [] for k in keys}
    obs = None
    for t in range(n):
        start = t % episode_len == 0
        if start:
            obs = np.concatenate([[1.25], rng.normal(scale=0.01, size=OBS - 1)]).astype(np.float32)
        act = rng.uniform(-1, 1, ACT).astype(np.float32) if policy is None else policy(obs[None])[0]
        nxt = (obs + act @ mix).astype(np.float32)
        for k, v in zip(keys, (obs, act, np.float32(nxt[5] - 1e-3 * act @ act + 1), nxt, False,
                               t % episode_len == episode_len - 1 or t == n - 1, start)):
            out[k].append(v)
        obs = nxt
    return {k: np.array(v) for k, v in out.items()}


def plain_values(tree) -> bool:
    """True when every leaf is a tensor or a plain Python number/str/bool/None."""
    if isinstance(tree, dict):
        return all(plain_values(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(plain_values(v) for v in tree)
    return tree is None or isinstance(tree, (torch.Tensor, int, float, str, bool))


class Timer:
    """Records the phases that algos.run's PhaseTimer would time."""

    def __init__(self):
        self.phases = []

    def __call__(self, phase):
        self.phases.append(phase)
        return contextlib.nullcontext()


def run_two_deployments(cfg):
    algo = MOPO(ENV, cfg, OBS, ACT, torch.device("cpu"), seed=0)
    dataset, timer = DeploymentDataset(OBS, ACT), Timer()
    for deployment in (1, 2):
        policy = algo.collection_policy(deployment)
        assert (policy is None) == (deployment == 1)
        dataset.add(fake_collect(policy, 200, seed=deployment))
        algo.train(dataset, deployment, timer)
    return algo, dataset, timer


def test_mopo_end_to_end_two_deployments_and_weights_only_state_dict(monkeypatch):
    cfg = tiny_cfg()
    m = cfg["mopo"]
    seen = {"termination": set(), "mix": set(), "rollouts": 0}
    real_termination, real_mix, real_rollout = envs.mopo_termination, mopo_module.mixed_batch, mopo_module.model_rollout

    def termination(name, *args):
        seen["termination"].add(name)
        return real_termination(name, *args)

    def mix(real, model, batch_size, real_ratio, gen):
        seen["mix"].add((batch_size, real_ratio, len(real)))
        assert len(model) <= m["model_retain_epochs"] * m["horizon"] * m["rollout_batch"]
        return real_mix(real, model, batch_size, real_ratio, gen)

    def rollout(*args, **kwargs):
        seen["rollouts"] += 1
        return real_rollout(*args, **kwargs)

    monkeypatch.setattr(envs, "mopo_termination", termination)
    monkeypatch.setattr(mopo_module, "mixed_batch", mix)
    monkeypatch.setattr(mopo_module, "model_rollout", rollout)
    algo, dataset, timer = run_two_deployments(cfg)

    assert timer.phases == ["model", "policy"] * 2
    assert seen["termination"] == {ENV}                                   # MOPO's (the env's) termination rule
    assert seen["mix"] == {(m["sac_batch_size"], m["real_ratio"], 200), (m["sac_batch_size"], m["real_ratio"], 400)}
    assert seen["rollouts"] == 2 * math.ceil(m["sac_steps"] / m["rollout_every"])
    assert algo.sac.updates == 2 * m["sac_steps"]                         # warm start: one agent throughout
    assert algo.sac.target_entropy == m["target_entropy"]
    assert algo.model.members == m["members"] and len(algo.model.elites) == m["elites"]
    # elites: the members with the lowest validation MSE of the last fit
    best = torch.tensor(algo.stats["model_best_val"])
    assert algo.model.elites.tolist() == torch.argsort(best)[: m["elites"]].tolist()

    obs = dataset.all()["obs"][:5]
    act_before = algo.eval_policy()(obs)
    assert act_before.shape == (5, ACT) and np.isfinite(act_before).all()
    replay = algo.dynamics_model().predict_trajectory(obs, torch.zeros(5, 4, ACT))
    assert replay.shape == (5, 4, OBS)

    state = algo.state_dict()
    assert plain_values(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = MOPO(ENV, cfg, OBS, ACT, torch.device("cpu"), seed=1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(fresh.eval_policy()(obs), act_before)
    assert torch.equal(fresh.model.elites, algo.model.elites)
    torch.testing.assert_close(fresh.dynamics_model().predict_trajectory(obs, torch.zeros(5, 4, ACT)), replay)
    assert fresh.sac.updates == algo.sac.updates


def test_retrain_from_scratch_switch_and_minus_act_dim_target():
    cfg = tiny_cfg(warm_start=False, target_entropy="minus_act_dim", sac_steps=10, penalty="frobenius")
    algo, _, _ = run_two_deployments(cfg)
    assert algo.sac.updates == cfg["mopo"]["sac_steps"]                   # a fresh agent at deployment 2
    assert algo.sac.target_entropy == -ACT


def test_weight_decay_must_give_one_value_per_layer():
    from algos.config import ConfigError, resolve_run_config
    with pytest.raises(ConfigError, match="mopo.weight_decay has 5 entries"):
        resolve_run_config("smoke", "mopo", "hopper", "500k", 0, ["mopo.weight_decay=[0.1, 0.1, 0.1, 0.1, 0.1]"])


def test_mopo_on_the_real_env_with_the_collector():
    """Two deployments of the real HalfCheetah through envs.collector.collect."""
    try:
        envs.make_env("halfcheetah")
    except ImportError as err:  # an env dependency missing from the venv: report, do not fail here
        pytest.skip(f"halfcheetah cannot be built: {err}")
    from envs.collector import collect

    spec = envs.ENV_SPECS["halfcheetah"]
    cfg = tiny_cfg(sac_steps=10)
    algo = MOPO("halfcheetah", cfg, spec.obs_dim, spec.act_dim, torch.device("cpu"), seed=0)
    dataset = DeploymentDataset(spec.obs_dim, spec.act_dim)
    for deployment in (1, 2):
        dataset.add(collect("halfcheetah", 150, algo.collection_policy(deployment), seed=deployment,
                            max_episode_steps=50))
        algo.train(dataset, deployment, Timer())
    assert np.isfinite(algo.eval_policy()(dataset.all()["obs"][:3])).all()


# ---------------------------------------------------------------- the model fit (MOPO's official code)
def raw_model_fit(target_space, scale=10.0):
    """MOPO's model on targets ~10x their natural scale, trained 2 epochs; returns the model, the
    holdout dict and the trainer's result."""
    from algos.core.training import ModelTrainer, StoppingRule
    algo = MOPO(ENV, tiny_cfg(target_space=target_space), OBS, ACT, torch.device("cpu"), seed=0)
    batch = fake_collect(None, 300, seed=1)
    batch["next_obs"] = batch["obs"] + scale * (batch["next_obs"] - batch["obs"])
    batch["rew"] = scale * batch["rew"]
    train = {k: v[:250] for k, v in batch.items()}
    hold = {k: v[250:] for k, v in batch.items()}
    res = ModelTrainer(lr=1e-3, batch_size=64).fit(algo.model, train, hold, StoppingRule(patience=9, max_epochs=2),
                                                   torch.Generator().manual_seed(0))
    return algo.model, hold, res


def test_model_predicts_raw_targets_holdout_mse_and_nll_in_raw_units():
    """mopo/models/constructor.py:46-54 and bnn.py:403: only the inputs are standardised; the
    targets [r, delta s] stay raw, so the holdout MSE (elites, stopping) and the NLL are in raw units."""
    from algos.core.ensemble import gaussian_nll
    model, hold, res = raw_model_fit("raw")
    torch.testing.assert_close(model.target_norm.mean, torch.zeros(OBS + 1))   # the identity
    torch.testing.assert_close(model.target_norm.std, torch.ones(OBS + 1))
    pred = model.predict(hold["obs"], hold["act"])
    raw = torch.cat([pred.next_obs - torch.as_tensor(hold["obs"]), pred.reward.unsqueeze(-1)], -1)
    target = torch.cat([torch.as_tensor(hold["next_obs"] - hold["obs"]), torch.as_tensor(hold["rew"]).view(-1, 1)], -1)
    mse_raw = (raw - target).square().mean(dim=(1, 2))
    np.testing.assert_allclose(res["final_val"], mse_raw.numpy(), rtol=1e-4)
    # the NLL the trainer minimises is eq. 10 on the raw targets, and predict's std is exp(logvar / 2)
    x = model.input_norm.normalize(torch.cat([torch.as_tensor(hold["obs"]), torch.as_tensor(hold["act"])], -1))
    xb = x.expand(model.members, -1, -1)
    with torch.no_grad():
        mean, logvar = model.net(xb)
        torch.testing.assert_close(model.data_loss(xb, target.expand(model.members, -1, -1)),
                                   gaussian_nll(mean, logvar, target.expand(model.members, -1, -1)))
    torch.testing.assert_close(pred.next_obs_std, torch.exp(0.5 * logvar[..., :OBS]))
    # the old switch standardises the targets: its holdout MSE is in standardised units instead
    model_std, hold, res_std = raw_model_fit("standardized")
    assert model_std.target_norm.std.max() > 1.5
    pred = model_std.predict(hold["obs"], hold["act"])
    raw = torch.cat([pred.next_obs - torch.as_tensor(hold["obs"]), pred.reward.unsqueeze(-1)], -1)
    mse_std = ((raw - target) / model_std.target_norm.std).square().mean(dim=(1, 2))
    np.testing.assert_allclose(res_std["final_val"], mse_std.numpy(), rtol=1e-4)


def test_stopping_rule_and_bootstrap_follow_mopos_code(monkeypatch):
    from algos.config import resolve_run_config
    from algos.core import training
    cfg = resolve_run_config("paper", "mopo", "hopper", "500k", 0, [])
    algo = MOPO("hopper", cfg, 11, 3, torch.device("cpu"), seed=0)
    assert algo.model_stopping() == training.MOPO_STOPPING          # patience 6, 1 %, no cap, best weights
    assert cfg["mopo"]["bootstrap"] and cfg["mopo"]["target_space"] == "raw"
    seen = []
    real = training.member_rows
    monkeypatch.setattr(training, "member_rows", lambda m, n, b, g: seen.append((m, n, b)) or real(m, n, b, g))
    algo, dataset, _ = run_two_deployments(tiny_cfg())
    n_hold = [min(int(0.2 * n), 1000) for n in (200, 400)]
    assert seen == [(4, 200 - n_hold[0], True), (4, 400 - n_hold[1], True)]   # 4 members (tiny_cfg)


def test_diagnostics_model_penalty_and_sac():
    """Issue 14: the model's holdout MSE per member, the penalty of each rollout (mean, max) and
    SAC's losses and alpha per rollout interval."""
    algo, _, _ = run_two_deployments(tiny_cfg())
    rows = algo.scalars.rows
    names = {(r["phase"], r["name"]) for r in rows}
    assert {("mopo_model", f"holdout_mse_m{k}") for k in range(4)} <= names
    assert {("mopo_rollout", "penalty_mean"), ("mopo_rollout", "penalty_max"), ("sac", "q_loss"),
            ("sac", "policy_loss"), ("sac", "alpha")} <= names
    means = [r["value"] for r in rows if r["name"] == "penalty_mean"]
    maxes = [r["value"] for r in rows if r["name"] == "penalty_max"]
    assert len(means) == 2 * math.ceil(25 / 10) and all(0 < a <= b for a, b in zip(means, maxes))
    assert [r["step"] for r in rows if r["name"] == "q_loss"][:3] == [10, 20, 25]


def test_model_reward_mean_is_the_reward_before_the_penalty(monkeypatch):
    """mopo_rollout/model_reward_mean: the mean r-hat of each rollout's stored transitions, beside
    penalty_mean (the analysis compares lambda * penalty with it)."""
    raw_per_rollout, real_rollout, real_step = [], mopo_module.model_rollout, mopo_module.penalised_model_step

    def rollout(*args, **kwargs):
        raw_per_rollout.append([])
        return real_rollout(*args, **kwargs)

    def step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        raw_per_rollout[-1].append(out["raw_reward"])
        return out
    monkeypatch.setattr(mopo_module, "model_rollout", rollout)
    monkeypatch.setattr(mopo_module, "penalised_model_step", step)
    algo, _, _ = run_two_deployments(tiny_cfg(penalty_lambda=2.5))
    recorded = [r["value"] for r in algo.scalars.rows if r["name"] == "model_reward_mean"]
    expected = [float(torch.cat(raw).mean()) for raw in raw_per_rollout]
    assert len(recorded) == len(expected) > 0
    np.testing.assert_allclose(recorded, expected, rtol=1e-5, atol=1e-6)
