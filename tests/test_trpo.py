"""algos.core.trpo: GAE, baselines, conjugate gradient, Fisher-vector products, the weighted
surrogate of eq. 13, the KL-constrained step with its line search, and one policy_update."""
import copy
import math

import pytest
import torch
from torch.func import functional_call

from algos.core import trpo
from algos.core.policy import GaussianPolicy
from algos.core.trpo import (LinearBaseline, MLPBaseline, conjugate_gradient, discounted_reverse_cumsum,
                             fisher_vector_product, flat, gae, line_search, make_baseline, policy_parameters,
                             policy_update, trpo_step, weighted_surrogate)

TRPO = dict(delta=0.01, cg_iters=10, cg_damping=0.1, line_search_steps=10)
KL_BACKTRACK = dict(line_search_rule="kl_backtrack", line_search_decay=0.5)


def make_policy(obs_dim=4, act_dim=2, hidden=(16,), seed=0, **kw):
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim, act_dim, hidden=hidden, **kw)
    policy.set_obs_normalizer(torch.linspace(-0.5, 0.5, obs_dim), torch.linspace(0.5, 1.5, obs_dim))
    return policy


def states_and_sampled_actions(policy, T, N, gen):
    """Random states [T, N, 4] and the policy's sampled actions [T, N, 2] (make_policy's sizes)."""
    obs = torch.randn(T, N, 4, generator=gen)
    with torch.no_grad():
        return obs, policy.sample(obs.reshape(-1, 4), gen).reshape(T, N, 2)


def batch(policy, n=256, seed=1):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, policy.obs_dim, generator=gen)
    with torch.no_grad():
        act = policy.sample(obs, gen)
    target = torch.full((policy.act_dim,), 0.4)
    adv = -(act - target).pow(2).sum(-1)
    return obs, act, (adv - adv.mean()) / adv.std()


# ---------------------------------------------------------------- GAE
def reference_gae(rew, values, terminated, gamma, lam, last_values=None):
    """A plain loop over time, lane by lane, path by path."""
    T, N = rew.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        next_adv = 0.0
        for t in reversed(range(T)):
            end = bool(terminated[t, n]) or t == T - 1
            if t == T - 1 and last_values is not None and not bool(terminated[t, n]):
                v_next = float(last_values[n])
            else:
                v_next = 0.0 if end else float(values[t + 1, n])
            if end:
                next_adv = 0.0
            next_adv = float(rew[t, n]) + gamma * v_next - float(values[t, n]) + gamma * lam * next_adv
            adv[t, n] = next_adv
    return adv


def test_gae_by_hand_value_zero_after_every_path_and_bootstrap_switch():
    gamma, lam = 0.9, 0.8
    # lane 0 terminates at t=1, a new path starts at t=2 and is cut at t=2; lane 1 runs on and is cut
    rew = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    values = torch.tensor([[0.5, 1.0], [1.0, 2.0], [4.0, 3.0]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    adv, ret = gae(rew, values, terminated, gamma, lam)
    a2 = 3.0 - 4.0                              # cut-off: value 0 after the path (BREMEN's code)
    a1 = 2.0 - 1.0                              # terminated: value 0, nothing from the next path
    a0 = (1.0 + gamma * 1.0 - 0.5) + gamma * lam * a1
    b2 = 1.0 - 3.0
    b1 = (1.0 + gamma * 3.0 - 2.0) + gamma * lam * b2
    b0 = (1.0 + gamma * 2.0 - 1.0) + gamma * lam * b1
    assert torch.allclose(adv, torch.tensor([[a0, b0], [a1, b1], [a2, b2]]), atol=1e-6)
    assert torch.allclose(ret, adv + values)
    # bootstrap_cutoff: V(s'_{T-1}) at the cut-off of every lane not terminated there
    adv_b, _ = gae(rew, values, terminated, gamma, lam, last_values=torch.tensor([10.0, 20.0]))
    a2b = 3.0 + gamma * 10.0 - 4.0
    b2b = 1.0 + gamma * 20.0 - 3.0
    b1b = (1.0 + gamma * 3.0 - 2.0) + gamma * lam * b2b
    assert torch.allclose(adv_b[:, 0], torch.tensor([a0, a1, a2b]), atol=1e-5)
    assert torch.allclose(adv_b[:, 1], torch.tensor([(1.0 + gamma * 2.0 - 1.0) + gamma * lam * b1b, b1b, b2b]),
                          atol=1e-5)
    terminated_last = terminated.clone()
    terminated_last[2, 0] = True                 # a termination at T-1 never bootstraps
    adv_t, _ = gae(rew, values, terminated_last, gamma, lam, last_values=torch.tensor([10.0, 20.0]))
    assert torch.isclose(adv_t[2, 0], torch.tensor(a2))


@pytest.mark.parametrize("bootstrap", [False, True])
def test_vectorised_gae_equals_the_reference_loop(bootstrap):
    gen = torch.Generator().manual_seed(0)
    T, N = 37, 9
    rew = torch.randn(T, N, generator=gen, dtype=torch.float64)
    values = torch.randn(T, N, generator=gen, dtype=torch.float64)
    terminated = torch.rand(T, N, generator=gen) < 0.1
    last = torch.randn(N, generator=gen, dtype=torch.float64) if bootstrap else None
    adv, _ = gae(rew, values, terminated, 0.99, 0.95, last_values=last)
    assert torch.allclose(adv, reference_gae(rew, values, terminated, 0.99, 0.95, last), atol=1e-10)
    # the scan alone, on a lane with an end at every step: y = x
    assert torch.equal(discounted_reverse_cumsum(rew, torch.ones(T, N, dtype=torch.bool), 0.9), rew)


def test_gae_has_no_python_loop_over_time():
    """The scan makes ceil(log2 T) passes: 64x more steps cost less than 3x the ops, not 64x."""
    from torch.profiler import ProfilerActivity, profile

    def ops(T):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            gae(torch.ones(T, 3), torch.zeros(T, 3), torch.zeros(T, 3, dtype=torch.bool), 0.99, 0.95)
        return sum(e.count for e in prof.key_averages())

    assert ops(512) < 3 * ops(8)


# ---------------------------------------------------------------- baselines
def test_linear_baseline_features_are_bremens():
    """[o, o^2, t, t^2, t^3, 1] with o = clip((s - mean) / std, +-10), t = step / 100
    (BREMEN model/baselines.py:15-21)."""
    policy = make_policy(obs_dim=2)
    policy.set_obs_normalizer(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.01]))
    base = make_baseline("linear", 2, {"baseline_time_scale": 100.0, "baseline_normalize_obs": True},
                         normalize=policy.normalize)
    feats = base.features(torch.tensor([[3.0, -2.0]]), torch.tensor([50]))
    # o = [(3 - 1) / 2, clip(-2 / 0.01)] = [1, -10]; t = 0.5
    assert torch.allclose(feats, torch.tensor([[1.0, -10.0, 1.0, 100.0, 0.5, 0.25, 0.125, 1.0]], dtype=torch.float64))
    raw = make_baseline("linear", 2, {"baseline_time_scale": 1000.0, "baseline_normalize_obs": False},
                        normalize=policy.normalize)
    assert torch.allclose(raw.features(torch.tensor([[3.0, -2.0]]), torch.tensor([500])),
                          torch.tensor([[3.0, -2.0, 9.0, 4.0, 0.5, 0.25, 0.125, 1.0]], dtype=torch.float64))


def test_linear_baseline_masked_fit():
    base = LinearBaseline(obs_dim=2)
    assert torch.equal(base.predict(torch.randn(3, 2), torch.arange(3)), torch.zeros(3))  # before a fit
    gen = torch.Generator().manual_seed(0)
    T, N = 50, 8
    obs = torch.randn(T, N, 2, generator=gen)
    t = torch.arange(T).unsqueeze(1).expand(T, N) * 2
    coef = torch.randn(8, generator=gen, dtype=torch.float64)
    returns = (base.features(obs, t) @ coef).float()
    mask = torch.ones(T, N)
    mask[40:, :3] = 0
    returns[40:, :3] = 1e6               # garbage on the masked steps must not matter
    obs[40:, :3] = float("nan")
    base.fit(obs, t, returns, mask)
    keep = mask > 0
    assert torch.allclose(base.predict(obs, t)[keep], returns[keep], atol=1e-3)
    assert torch.allclose(base.coef, coef, atol=1e-3)


def test_mlp_baseline_learns_the_returns():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    obs = torch.randn(64, 8, 3, generator=gen)
    t = torch.arange(64).unsqueeze(1).expand(64, 8)
    returns = obs[..., 0] * 2.0 + t / 64.0
    base = MLPBaseline(3, hidden=(32,), lr=1e-2, epochs=40, batch_size=128)
    base.fit(obs, t, returns, torch.ones(64, 8), generator=gen)
    err = (base.predict(obs, t) - returns).pow(2).mean()
    assert err < 0.05 * returns.var()
    assert isinstance(make_baseline("linear", 3, {}), LinearBaseline)
    assert isinstance(make_baseline("mlp", 3, {"value_lr": 1e-3, "value_epochs": 5, "value_hidden": [200, 200], "value_batch_size": 1000}), MLPBaseline)
    with pytest.raises(ValueError):
        make_baseline("quadratic", 3, {})


# ---------------------------------------------------------------- natural gradient pieces
def test_conjugate_gradient_solves_a_small_spd_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
    assert torch.allclose(conjugate_gradient(lambda v: a @ v, torch.zeros(6, dtype=torch.float64), 6),
                          torch.zeros(6, dtype=torch.float64))
    # converged early (2 distinct eigenvalues: exact after 2 steps): the later steps are no-ops, not NaN
    d = torch.diag(torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64))
    x = conjugate_gradient(lambda v: d @ v, torch.ones(4, dtype=torch.float64), iters=10)
    assert torch.allclose(x, torch.tensor([1.0, 1.0, 1 / 3, 1 / 3], dtype=torch.float64), atol=1e-12)


def host_syncs(fn) -> int:
    """aten::_local_scalar_dense calls (every float(), int(), bool(), .item() of a tensor goes
    through one: a device-to-host sync on a GPU) made by fn, counted by the profiler. A
    .tolist() of a CPU tensor is no aten op and is not counted."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


@pytest.mark.parametrize("log_std", ["state_dependent", "global"])
def test_conjugate_gradient_on_the_fisher_makes_no_host_sync(log_std):
    policy = make_policy(log_std=log_std)
    obs, act, adv = batch(policy)
    lin = policy.linearization(obs)
    grad = trpo.surrogate_gradient(policy, lin, act, adv, None)
    fvp = fisher_vector_product(policy, obs, 0.1, linearization=lin)
    assert host_syncs(lambda: conjugate_gradient(fvp, grad, 10)) == 0
    assert host_syncs(lambda: float(grad[0])) == 1          # the counter does see a sync


@pytest.mark.parametrize("log_std", ["state_dependent", "global"])
@pytest.mark.parametrize("method", ["gauss_newton", "double_backward"])
def test_fisher_vector_product_equals_the_hessian_of_the_kl(method, log_std):
    policy = make_policy(obs_dim=3, act_dim=2, hidden=(4, 3), log_std=log_std).double()
    if log_std == "state_dependent":
        with torch.no_grad():
            policy.log_std_weight.normal_()
    obs = torch.randn(30, 3, dtype=torch.float64)
    params = policy_parameters(policy)
    names = {id(p): n for n, p in policy.named_parameters()}
    with torch.no_grad():
        old_mean, old_log_std = policy.distribution(obs)
    theta0 = flat(params).detach()

    def kl_of(theta):
        tensors, i = {}, 0
        for p in params:
            tensors[names[id(p)]] = theta[i:i + p.numel()].view_as(p)
            i += p.numel()
        mean, log_std = functional_call(policy, tensors, (obs,))
        return trpo.gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    hessian = torch.autograd.functional.hessian(kl_of, theta0)
    damping = 0.1
    fvp = fisher_vector_product(policy, obs, damping, method)
    for seed in range(3):
        v = torch.randn(theta0.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert torch.allclose(fvp(v), hessian @ v + damping * v, atol=1e-9)


def test_weighted_surrogate_with_unit_weights_is_plain_trpo():
    policy = make_policy()
    obs, act, adv = batch(policy)
    old_log_prob = policy.log_prob(obs, act).detach() + 0.1 * torch.randn(len(obs))
    plain = (torch.exp(policy.log_prob(obs, act) - old_log_prob) * adv).mean()
    assert torch.allclose(weighted_surrogate(policy, obs, act, adv, torch.ones(len(obs)), old_log_prob), plain)
    assert torch.allclose(weighted_surrogate(policy, obs, act, adv, None, old_log_prob), plain)

    p_weighted, p_plain = copy.deepcopy(policy), copy.deepcopy(policy)
    s1 = trpo_step(p_weighted, obs, act, adv, torch.ones(len(obs)), **TRPO)
    s2 = trpo_step(p_plain, obs, act, adv, None, **TRPO)
    assert s1["accepted"] and s1["step_fraction"] == s2["step_fraction"]
    assert torch.allclose(flat(policy_parameters(p_weighted)), flat(policy_parameters(p_plain)), atol=1e-6)


def test_zero_weights_remove_samples_from_the_surrogate_gradient():
    policy = make_policy()
    obs, act, adv = batch(policy, n=100)
    adv[60:] = 1000.0                      # would dominate the gradient if it leaked through
    weights = torch.cat([torch.linspace(0.2, 1.0, 60), torch.zeros(40)])
    old = policy.log_prob(obs, act).detach()
    params = policy_parameters(policy)
    g_all = torch.autograd.grad(weighted_surrogate(policy, obs, act, adv, weights, old), params)
    g_sub = torch.autograd.grad(
        weighted_surrogate(policy, obs[:60], act[:60], adv[:60], weights[:60], old[:60]), params)
    for a, b in zip(g_all, g_sub):  # the full-batch mean divides by 100, the subset's by 60
        assert torch.allclose(a, b * 60 / 100, atol=1e-6)


def test_surrogate_gradient_equals_autograd_of_the_weighted_surrogate():
    policy = make_policy(min_log_std=-1.0)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.5, -3.0]))  # the second sits on its floor: no gradient
    sd_policy = make_policy(log_std="state_dependent")
    with torch.no_grad():
        sd_policy.log_std_weight.normal_()
    for p in (policy, sd_policy):
        obs, act, adv = batch(p, n=100)
        weights = torch.rand(100, generator=torch.Generator().manual_seed(0))
        old = p.log_prob(obs, act).detach()
        for w in (weights, None):
            expected = flat(torch.autograd.grad(weighted_surrogate(p, obs, act, adv, w, old), policy_parameters(p)))
            got = trpo.surrogate_gradient(p, p.linearization(obs), act, adv, w)
            assert torch.allclose(got, expected, atol=1e-6)
            if p is policy:
                assert got[-1] == 0
            else:
                assert got[-2:].abs().min() > 0       # the log-std head's bias gets a gradient


def test_trpo_step_kl_within_delta_and_close_to_it_when_the_full_step_is_taken():
    delta, full_steps = 0.001, 0
    for seed in range(8):
        policy = make_policy(seed=seed)
        obs, act, adv = batch(policy, n=512, seed=seed)
        before = copy.deepcopy(policy)
        stats = trpo_step(policy, obs, act, adv, None, delta=delta, cg_iters=10, cg_damping=1e-3,
                          line_search_steps=10, **KL_BACKTRACK)
        assert stats["accepted"] and stats["kl"] <= delta
        assert stats["surrogate_after"] > stats["surrogate_before"]
        # 1/2 s^T F s = delta: the KL of the accepted step is delta * fraction^2 up to third-order terms
        assert 0.9 < stats["kl"] / (delta * stats["step_fraction"] ** 2) < 1.1
        full_steps += stats["step_fraction"] == 1.0
        with torch.no_grad():  # the reported KL is the true mean KL to the old policy
            old_mean, old_log_std = before.distribution(obs)
            kl = float(policy.kl_from(old_mean, old_log_std, obs))
        assert math.isclose(kl, stats["kl"], rel_tol=1e-4)
    # whether the full step lands inside the radius depends on the sign of the third-order term
    assert full_steps >= 1


def test_trpo_step_with_fvp_subsample_stays_within_delta():
    policy = make_policy()
    obs, act, adv = batch(policy, n=512)
    stats = trpo_step(policy, obs, act, adv, None, **TRPO, **KL_BACKTRACK, fvp_subsample=0.25,
                      generator=torch.Generator().manual_seed(0))
    assert stats["accepted"] and stats["kl"] <= TRPO["delta"]


def test_line_search_rejects_kl_violations_and_restores_the_parameters(monkeypatch):
    real_fvp = trpo.fisher_vector_product

    def underestimated_fvp(*args, **kwargs):
        fvp = real_fvp(*args, **kwargs)
        return lambda v: fvp(v) / 1000.0    # steps ~30x too long: KL ~1000 delta

    monkeypatch.setattr(trpo, "fisher_vector_product", underestimated_fvp)
    policy = make_policy()
    obs, act, adv = batch(policy)
    before = flat(policy_parameters(policy)).detach().clone()
    stats = trpo_step(policy, obs, act, adv, None, **{**TRPO, **KL_BACKTRACK, "line_search_steps": 2})
    assert not stats["accepted"] and stats["step_fraction"] == 0.0 and float(stats["kl"]) == 0.0
    assert torch.equal(flat(policy_parameters(policy)), before)
    stats = trpo_step(policy, obs, act, adv, None, **{**TRPO, **KL_BACKTRACK, "line_search_steps": 15})
    assert stats["accepted"] and stats["step_fraction"] < 0.25 and stats["kl"] <= TRPO["delta"]


def scripted_search(rule, improvements, kls, expected=1.0, steps=10, decay=0.8):
    """line_search on a policy whose k-th candidate scores improvements[k] with KL kls[k]."""
    policy = make_policy()
    before = flat(policy_parameters(policy)).detach().clone()
    tried = []

    def evaluate():
        k = len(tried)
        tried.append(k)
        return torch.tensor(improvements[k]), torch.tensor(kls[k])

    out = line_search(policy, before, torch.ones_like(before), evaluate, torch.tensor(0.0), torch.tensor(expected),
                      rule=rule, delta=0.1, steps=steps, decay=decay)
    return out, policy, before, tried


def test_bremen_line_search_halves_and_accepts_on_the_improvement_ratio_without_a_kl_check():
    """BREMEN's misc_utils.linesearch: fractions 0.5^k, accept when actual / (expected x fraction)
    > 0.1 and actual > 0, whatever the KL."""
    # k=0: 0.05 / 1.0 < 0.1: rejected; k=1: 0.06 / 0.5 = 0.12: accepted though KL = 50 delta
    (accepted, fraction, k, surr, kl), policy, before, tried = scripted_search(
        "bremen", [0.05, 0.06, 1.0], [0.0, 5.0, 0.0])
    assert accepted and fraction == 0.5 and k == 1 and float(surr) == pytest.approx(0.06) and float(kl) == 5.0
    assert torch.allclose(flat(policy_parameters(policy)), before + 0.5)
    # a negative improvement is never accepted, even with a negative expectation (ratio > 0.1)
    (accepted, fraction, k, surr, kl), policy, before, tried = scripted_search(
        "bremen", [-0.5] * 10, [0.0] * 10, expected=-1.0)
    assert not accepted and fraction == 0.0 and k == 10 and len(tried) == 10
    assert torch.equal(flat(policy_parameters(policy)), before)


def test_kl_backtrack_line_search_checks_the_kl_and_decays_by_its_ratio():
    (accepted, fraction, k, surr, kl), policy, before, _ = scripted_search(
        "kl_backtrack", [0.05, 0.06, 0.01], [0.5, 0.5, 0.05], decay=0.8)
    assert accepted and k == 2 and fraction == pytest.approx(0.64)
    assert torch.allclose(flat(policy_parameters(policy)), before + 0.64)
    (accepted, fraction, k, surr, kl), policy, before, _ = scripted_search(
        "kl_backtrack", [-1.0] * 5, [0.0] * 5, steps=5)
    assert (accepted, fraction, k, float(surr), float(kl)) == (False, 0.0, 5, 0.0, 0.0)
    assert torch.equal(flat(policy_parameters(policy)), before)
    with pytest.raises(ValueError, match="trpo.line_search"):
        scripted_search("rllab", [0.0], [0.0])


def test_trpo_step_syncs_once_per_line_search_candidate():
    """Besides the one .tolist() of the checks after CG (not an aten op), the only host syncs of a
    step are the line search's accept tests, one per candidate tried."""
    for rule, n in (("bremen", 512), ("kl_backtrack", 64)):
        policy = make_policy(log_std="state_dependent")
        obs, act, adv = batch(policy, n=n)
        stats = {}
        syncs = host_syncs(lambda: stats.update(trpo_step(policy, obs, act, adv, None, **TRPO, line_search_rule=rule)))
        assert stats["accepted"]
        assert syncs == stats["backtracks"] + 1


# ---------------------------------------------------------------- one TRPO iteration
def bandit_rollout(policy, obs, target, gen):
    with torch.no_grad():
        act = policy.sample(obs, gen)
    n = obs.shape[0]
    return dict(obs=obs[None], act=act[None], rew=-(act - target).pow(2).sum(-1)[None],
                next_obs=obs[None], terminated=torch.ones(1, n, dtype=torch.bool), alive=torch.ones(1, n))


@pytest.mark.parametrize("rule", ["bremen", "kl_backtrack"])
def test_policy_update_improves_a_one_step_bandit(rule):
    policy = make_policy(obs_dim=2, act_dim=2, init_log_std=-0.5)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(256, 2, generator=gen)
    target = torch.tensor([0.5, -0.3])

    def expected_reward():  # E[-||a - target||^2] = -(||mean - target||^2 + sum sigma^2)
        with torch.no_grad():
            mean, log_std = policy.distribution(obs)
            return float(-((mean - target).pow(2).sum(-1) + log_std.exp().pow(2).sum(-1)).mean())

    baseline = LinearBaseline(2)
    start = expected_reward()
    for _ in range(15):
        stats = policy_update(policy, baseline, bandit_rollout(policy, obs, target, gen), None, gamma=0.99,
                              lam=0.95, normalize_advantages=True, **{**TRPO, "delta": 0.05}, line_search=rule,
                              generator=gen)
        assert stats["kl"] <= (0.05 if rule == "kl_backtrack" else 0.1)   # bremen: no KL check
    assert expected_reward() > start + 0.5 * abs(start)


def quadratic_cost_rollout(policy, T=5, N=16):
    """[T, N] steps of the policy's sampled actions with reward -||a||^2, none terminated, all alive."""
    obs, act = states_and_sampled_actions(policy, T, N, torch.Generator().manual_seed(0))
    return dict(obs=obs, act=act, rew=-act.pow(2).sum(-1), next_obs=torch.roll(obs, -1, 0),
                terminated=torch.zeros(T, N, dtype=torch.bool), alive=torch.ones(T, N))


def test_policy_update_ignores_dead_steps_and_guards_nan():
    policy = make_policy()
    gen = torch.Generator().manual_seed(0)
    T, N = 5, 16
    rollout = quadratic_cost_rollout(policy, T, N)
    rollout["terminated"][2, :4] = True
    rollout["alive"][3:, :4] = 0
    garbage = {k: v.clone() for k, v in rollout.items()}
    garbage["obs"][3:, :4] = float("nan")
    garbage["act"][3:, :4] = 1e9
    garbage["rew"][3:, :4] = float("inf")
    garbage["next_obs"][2:, :4] = float("nan")
    weights = torch.rand(T, N, generator=gen)
    results = []
    for r in (rollout, garbage):
        p, base = copy.deepcopy(policy), LinearBaseline(4)
        for _ in range(2):  # the second update uses the fitted baseline on the garbage too
            stats = policy_update(p, base, r, weights, gamma=0.99, lam=0.95, normalize_advantages=True, **TRPO,
                                  generator=torch.Generator().manual_seed(1))
        results.append(flat(policy_parameters(p)))
        assert stats["n_samples"] == T * N - 8
    assert torch.allclose(results[0], results[1], atol=1e-6)

    rollout["rew"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="phase=policy"):
        policy_update(policy, LinearBaseline(4), rollout, None, gamma=0.99, lam=0.95, normalize_advantages=True,
                      **TRPO)


def test_policy_update_carries_a_diverged_baseline_as_bremens_float64_does():
    """A baseline that predicts values of 1e37 (a linear baseline fed its own extrapolated value
    targets reached 1e34-1e36 in a medium MUSBO Hopper run): the sum behind the advantages' mean
    overflows float32, not float64 (BREMEN's numpy), so the update still takes a finite step."""
    policy = make_policy()
    rollout = quadratic_cost_rollout(policy)

    class Diverged(LinearBaseline):
        def predict(self, obs, timesteps):
            return 1e37 * (1.0 + obs[..., 0].abs())

    before = flat(policy_parameters(policy)).clone()
    stats = policy_update(policy, Diverged(4), rollout, None, gamma=0.99, lam=0.95, normalize_advantages=True,
                          **TRPO, generator=torch.Generator().manual_seed(1))
    after = flat(policy_parameters(policy))
    assert torch.isfinite(after).all() and not torch.equal(after, before)
    assert math.isfinite(stats["surrogate_before"]) and math.isfinite(stats["kl"])


def test_policy_update_reads_the_rollout_timestep_and_bootstraps_only_when_asked():
    """The baseline sees the rollout's `timestep` (steps since the path started, 0 after a restart);
    V(s'_{T-1}) at timestep + 1 is predicted only with bootstrap_cutoff."""
    policy = make_policy()
    gen = torch.Generator().manual_seed(0)
    T, N = 4, 3
    obs, act = states_and_sampled_actions(policy, T, N, gen)
    timestep = torch.tensor([[7, 0, 2], [8, 1, 0], [0, 2, 1], [1, 3, 2]])
    rollout = dict(obs=obs, act=act, rew=-act.pow(2).sum(-1), next_obs=obs + 1, timestep=timestep,
                   terminated=torch.zeros(T, N, dtype=torch.bool))
    rollout["terminated"][1, 0] = True

    class Recording(LinearBaseline):
        def predict(self, obs, timesteps):
            calls.append((obs.clone(), timesteps.clone()))
            return super().predict(obs, timesteps)

    for bootstrap in (False, True):
        calls = []
        stats = policy_update(policy, Recording(4), rollout, None, gamma=0.99, lam=0.95, normalize_advantages=True,
                              **TRPO, bootstrap_cutoff=bootstrap)
        assert stats["n_samples"] == T * N                       # no alive key: every sample is real
        assert torch.equal(calls[0][1], timestep)
        assert len(calls) == 1 + bootstrap
    assert torch.equal(calls[1][0], obs[-1] + 1) and torch.equal(calls[1][1], timestep[-1] + 1)
