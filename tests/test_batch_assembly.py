"""trpo.batch_assembly (issue 22): BREMEN's TRPO batch (`bremen_padded`) against a small numpy
re-implementation of BREMEN's sampler and process_samples (matsuolab/BREMEN
libs/samplers/vectorized_sampler.py:39-171, envs/neural_env.py:79-122, algos/trpo.py:165-182) on
a toy deterministic model whose paths end at chosen steps; the never-terminating case against
`full`; the chunked stop test (no per-step host sync); the refusal of a bad choice."""
import copy

import numpy as np
import pytest
import torch

from algos.config import ConfigError, resolve_run_config
from algos.core import rollouts, trpo
from algos.core.ensemble import Prediction
from algos.core.policy import GaussianPolicy, gaussian_kl, gaussian_log_prob
from algos.core.rollouts import imagine
from algos.core.trpo import policy_update

OBS, ACT = 3, 1
T, N = 6, 4                        # rollout length (max path length), lanes
GAMMA, LAM = 0.99, 0.95
STEP = dict(delta=0.01, cg_iters=10, cg_damping=0.1, line_search_steps=10)
TRPO_STEP = trpo.trpo_step


class ClockModel:
    """s = [clock, end, c] -> [clock + 1, end, c + 0.1 a]: a path from [0, end, c] terminates
    after `end` steps (see `terminates`), or is cut at T."""
    members, act_dim = 2, ACT

    def predict(self, obs, act, member=None):
        nxt = obs + torch.cat([torch.ones_like(act), torch.zeros_like(act), 0.1 * act], -1)
        return Prediction(nxt[None] if torch.as_tensor(member).dim() == 0 else nxt)


def terminates(s, a, s2):
    return s2[:, 0] >= s2[:, 1]


def reward(s, a, s2):
    return s2[:, 2] + 0.01 * s[:, 0]


def sample(obs, noise):  # deterministic: the numpy twin needs no noise
    return torch.tanh(0.3 * obs[:, 2:3] + 0.1 * obs[:, :1] - 0.2) * 1.5


def label(obs, act):
    return torch.sigmoid(obs[:, 2] + act[:, 0])


def np_sample(s):
    return np.tanh(0.3 * s[:, 2:3] + 0.1 * s[:, :1] - 0.2) * 1.5


def np_step(s, a):
    a = np.clip(a, -1.0, 1.0)
    s2 = s + np.concatenate([np.ones_like(a), np.zeros_like(a), 0.1 * a], -1)
    return s2, s2[:, 2] + 0.01 * s[:, 0], s2[:, 0] >= s2[:, 1]


class FixedBaseline:
    """V(s, t) = 0.5 c - 0.2 clock + 0.05 t; records what it is fitted on."""

    def predict(self, obs, timesteps):
        return 0.5 * obs[..., 2] - 0.2 * obs[..., 0] + 0.05 * timesteps.to(obs.dtype)

    def fit(self, obs, timesteps, returns, mask=None, generator=None):
        keep = torch.ones_like(returns, dtype=torch.bool) if mask is None else mask > 0
        self.fitted = (obs[keep].numpy(), timesteps[keep].numpy(), returns[keep].numpy())


def np_values(obs, t):
    return 0.5 * obs[:, 2] - 0.2 * obs[:, 0] + 0.05 * t


def pool(ends=(2, 3, 1, 9, 4, 100, 5, 7)):
    c = np.random.default_rng(0).uniform(-1, 1, len(ends))
    return torch.tensor([[0.0, e, ci] for e, ci in zip(ends, c)], dtype=torch.float32)


def roll(batch_size=None, starts=None, seed=0, **kw):
    return imagine(ClockModel(), sample, pool() if starts is None else starts, N, T, "hopper",
                   torch.Generator().manual_seed(seed), member_choice="per_step", reward_fn=reward,
                   termination_fn=terminates, label_fn=label, engine="eager", batch_size=batch_size, **kw)


# ---------------------------------------------------------------- BREMEN, in numpy
def bremen_obtain_samples(lane_starts, batch_size):
    """VectorizedSampler.obtain_samples over VecSimpleEnv: all lanes reset, one step for all,
    a lane is done at a termination or when its step count reaches T (then reset from its next
    start state); completed paths appended lane by lane; stop once their steps reach batch_size,
    tested after each step."""
    queues = [list(q) for q in lane_starts]
    nan = np.full(OBS, np.nan)  # a start the test does not know: must never be used
    states = np.stack([q.pop(0) for q in queues])
    ts = np.zeros(N)
    running = [None] * N
    paths, n_samples = [], 0
    while n_samples < batch_size:
        actions = np_sample(states)
        nxt, rewards, dones = np_step(states, actions)
        ts += 1
        dones[ts >= T] = True
        for i in range(N):
            running[i] = running[i] or dict(obs=[], act=[], rew=[])
            for key, value in (("obs", states[i]), ("act", actions[i]), ("rew", rewards[i])):
                running[i][key].append(value)
            if dones[i]:
                paths.append({key: np.array(value) for key, value in running[i].items()})
                n_samples += len(running[i]["rew"])
                running[i] = None
                nxt[i], ts[i] = (queues[i].pop(0) if queues[i] else nan), 0
        states = nxt
    return paths


def discount_cumsum(x, discount):
    out, acc = np.zeros_like(x), 0.0
    for i in range(len(x) - 1, -1, -1):
        acc = x[i] + discount * acc
        out[i] = acc
    return out


def bremen_process_samples(paths, batch_size):
    """process_samples (center_adv, alpha = 0: no behaviour-policy term) and optimize_policy's
    first batch_size rows of the zero-padded [paths x longest] arrays."""
    advantages, targets = [], []
    for path in paths:
        values = np.append(np_values(path["obs"], np.arange(len(path["rew"]))), 0)
        deltas = path["rew"] + GAMMA * values[1:] - values[:-1]
        advantages.append(discount_cumsum(deltas, GAMMA * LAM))
        targets.append(advantages[-1] + values[:-1])
    longest = max(len(a) for a in advantages)
    raw = np.concatenate(advantages)
    adv = [(a - np.mean(raw)) / (np.std(raw) + 1e-8) for a in advantages]

    def pad(xs):
        out = np.zeros((len(xs), longest) + xs[0].shape[1:])
        for i, x in enumerate(xs):
            out[i, :len(x)] = x
        return out.reshape((len(xs) * longest,) + xs[0].shape[1:])[:batch_size]
    real = pad([np.ones(len(a)) for a in adv]) > 0
    labels = [label(torch.tensor(p["obs"]), torch.tensor(np.clip(p["act"], -1, 1))).numpy() for p in paths]
    return dict(obs=pad([p["obs"] for p in paths]), act=pad([p["act"] for p in paths]), adv=pad(adv), real=real,
                labels=pad(labels), targets=targets)


def lane_starts(rollout):
    return [rollout["obs"][:, n][rollout["timestep"][:, n] == 0].numpy() for n in range(N)]


def make_policy():
    torch.manual_seed(0)
    policy = GaussianPolicy(OBS, ACT, hidden=(16,))
    policy.set_obs_normalizer(torch.tensor([3.0, 5.0, 0.0]), torch.tensor([2.0, 5.0, 1.0]))
    return policy


def update(monkeypatch, rollout, assembly, batch_size, weights=None):
    """policy_update with trpo_step's inputs captured; returns (stats, inputs, policy before, after)."""
    seen = {}

    def capture(policy, obs, act, adv, w=None, **kw):
        seen.update(obs=obs.clone(), act=act.clone(), adv=adv.clone(), w=None if w is None else w.clone())
        return TRPO_STEP(policy, obs, act, adv, w, **kw)
    monkeypatch.setattr(trpo, "trpo_step", capture)
    policy, baseline = make_policy(), FixedBaseline()
    before = copy.deepcopy(policy)
    stats = policy_update(policy, baseline, rollout, weights, gamma=GAMMA, lam=LAM, normalize_advantages=True,
                          **STEP, batch_assembly=assembly, batch_size=batch_size,
                          generator=torch.Generator().manual_seed(1))
    return stats, seen, before, policy, baseline


@pytest.mark.parametrize("batch_size", [24, 27])
def test_bremen_padded_batch_equals_bremens_sampler_and_process_samples(monkeypatch, batch_size):
    rollout = roll(batch_size)
    paths = bremen_obtain_samples(lane_starts(rollout), batch_size)
    ref = bremen_process_samples(paths, batch_size)
    assert sum(len(p["rew"]) for p in paths) >= batch_size
    assert {len(p["rew"]) for p in paths} >= {1, 2, T}            # terminations and cut-offs both end paths
    # the lanes ran past T, exactly as long as BREMEN's sampler: up to the step that filled the batch
    assert rollout["obs"].shape[0] > T and int(rollout["path_end"].sum()) == len(paths)
    ended_last = int(rollout["path_end"][-1].sum())
    assert ended_last > 0 and sum(len(p["rew"]) for p in paths[:-ended_last]) < batch_size

    stats, seen, before, after, baseline = update(monkeypatch, rollout, "bremen_padded", batch_size,
                                                  weights=rollout["labels"])
    # same rows, same padding, same advantage normalisation, labels on the real rows
    assert seen["obs"].shape == (batch_size, OBS)
    np.testing.assert_allclose(seen["obs"].numpy(), ref["obs"], atol=1e-5)
    np.testing.assert_allclose(seen["act"].numpy(), ref["act"], atol=1e-6)
    np.testing.assert_allclose(seen["adv"].numpy(), ref["adv"], atol=1e-4)
    np.testing.assert_allclose(seen["w"].numpy()[ref["real"]], ref["labels"][ref["real"]], atol=1e-6)
    n_real = int(ref["real"].sum())
    assert 0 < n_real < batch_size                                 # the fixture pads
    assert stats["n_samples"] == n_real
    assert stats["padding_share"] == pytest.approx(1 - n_real / batch_size)
    # the baseline is fitted on every step of the collected paths (also those past row batch_size)
    obs, t, returns = baseline.fitted
    assert len(returns) == sum(len(p["rew"]) for p in paths)
    key = lambda o, tt: np.lexsort((tt, o[:, 2], o[:, 1], o[:, 0]))  # noqa: E731
    ref_obs = np.concatenate([p["obs"] for p in paths])
    ref_t = np.concatenate([np.arange(len(p["rew"])) for p in paths])
    mine, theirs = key(obs, t), key(ref_obs, ref_t)
    np.testing.assert_allclose(obs[mine], ref_obs[theirs], atol=1e-5)
    np.testing.assert_allclose(returns[mine], np.concatenate(ref["targets"])[theirs], atol=1e-4)
    # KL and surrogate: means over all batch_size rows, padding included
    with torch.no_grad():
        rows = torch.tensor(ref["obs"], dtype=torch.float32)
        old, new = before.distribution(rows), after.distribution(rows)
        kl = gaussian_kl(*old, *new).numpy()
        act = torch.tensor(ref["act"], dtype=torch.float32)
        ratio = torch.exp(gaussian_log_prob(*new, act) - gaussian_log_prob(*old, act)).numpy()
    surrogate = ratio * ref["adv"] * np.where(ref["real"], ref["labels"], 0.0)
    assert stats["accepted"] and kl[~ref["real"]].max() > 0        # the step moved the padded rows too
    assert stats["kl"] == pytest.approx(kl.mean(), rel=1e-4)
    assert stats["kl"] != pytest.approx(kl[ref["real"]].mean(), rel=1e-2)
    assert stats["surrogate_after"] == pytest.approx(surrogate.mean(), rel=1e-4)
    assert stats["surrogate_after"] != pytest.approx(surrogate[ref["real"]].mean(), rel=1e-2)


def test_no_padding_without_terminations_and_the_batch_is_fulls(monkeypatch):
    """Never terminating, N x T = batch_size: every lane's path ends at step T together, nothing
    is padded, and the rows are `full`'s samples (path by path instead of step by step)."""
    starts = pool(ends=(1000,) * 8)
    padded_rollout, full_rollout = roll(N * T, starts), roll(None, starts)
    assert padded_rollout["obs"].shape[0] == T
    stats_p, seen_p, _, policy_p, base_p = update(monkeypatch, padded_rollout, "bremen_padded", N * T)
    stats_f, seen_f, _, policy_f, base_f = update(monkeypatch, full_rollout, "full", None)
    assert stats_p["padding_share"] == 0 and stats_p["n_samples"] == stats_f["n_samples"] == N * T
    path_major = lambda x: x.reshape(T, N, *x.shape[1:]).transpose(0, 1).reshape(x.shape)  # noqa: E731
    for key in ("obs", "act", "adv"):
        torch.testing.assert_close(seen_p[key], path_major(seen_f[key]), atol=1e-5, rtol=1e-5)
    for a, b in zip(policy_p.parameters(), policy_f.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert stats_p["kl"] == pytest.approx(stats_f["kl"], rel=1e-3)


def test_the_stop_test_runs_once_per_chunk_and_the_chunk_size_changes_nothing(monkeypatch):
    from torch.profiler import ProfilerActivity, profile
    calls = []
    real_run = rollouts._run
    monkeypatch.setattr(rollouts, "_run", lambda *a: calls.append(a[-1]) or real_run(*a))
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # every int() of a tensor is one such call
        out = roll(24)
    syncs = sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")
    steps = out["obs"].shape[0]
    assert syncs == len(calls) < steps and calls[0] == 24 // N   # no sync per step
    monkeypatch.setattr(rollouts, "CHUNKS_PER_HORIZON", 1)        # chunks of T steps
    other = roll(24)
    for key in out:
        torch.testing.assert_close(out[key], other[key])


def test_bad_choices_are_refused_in_one_line():
    for algo in ("bremen", "musbo"):
        assert resolve_run_config("smoke", algo, "hopper", "500k", 0)["trpo"]["batch_assembly"] == "bremen_padded"
    with pytest.raises(ConfigError) as err:
        resolve_run_config("smoke", "bremen", "hopper", "500k", 0, ["trpo.batch_assembly=padded"])
    assert "trpo.batch_assembly" in str(err.value) and "bremen_padded, full" in str(err.value)
    assert "\n" not in str(err.value)
    for bad in ("trpo.restart_terminated=false", "trpo.bootstrap_cutoff=true"):
        with pytest.raises(ConfigError, match="use trpo.batch_assembly=full") as err:
            resolve_run_config("smoke", "musbo", "hopper", "500k", 0, [bad])
        assert "\n" not in str(err.value)
        resolve_run_config("smoke", "musbo", "hopper", "500k", 0, [bad, "trpo.batch_assembly=full"])
    rollout = roll(24)
    with pytest.raises(ValueError, match="batch_assembly must be one of"):
        policy_update(make_policy(), FixedBaseline(), rollout, None, gamma=GAMMA, lam=LAM, normalize_advantages=True,
                      **STEP, batch_assembly="padded", batch_size=24)
    with pytest.raises(ValueError, match="needs batch_size"):
        policy_update(make_policy(), FixedBaseline(), roll(None), None, gamma=GAMMA, lam=LAM,
                      normalize_advantages=True, **STEP, batch_assembly="bremen_padded", batch_size=24)
    with pytest.raises(ValueError, match="needs restart=True"):
        roll(24, restart=False)
