"""algos.core.trpo: GAE, baselines, conjugate gradient, Fisher-vector products, the weighted
surrogate of eq. 13, the KL-constrained step with its line search, and one policy_update."""
import copy
import math

import pytest
import torch
from torch.func import functional_call

from algos.core import trpo
from algos.core.policy import GaussianPolicy
from algos.core.trpo import (LinearBaseline, MLPBaseline, backtracking_line_search, conjugate_gradient,
                             fisher_vector_product, flat, gae, make_baseline, policy_parameters, policy_update,
                             trpo_step, weighted_surrogate)

TRPO = dict(delta=0.01, cg_iters=10, cg_damping=0.1, line_search_steps=10)


def make_policy(obs_dim=4, act_dim=2, hidden=(16,), seed=0, **kw):
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim, act_dim, hidden=hidden, **kw)
    policy.set_obs_normalizer(torch.linspace(-0.5, 0.5, obs_dim), torch.linspace(0.5, 1.5, obs_dim))
    return policy


def batch(policy, n=256, seed=1):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, policy.obs_dim, generator=gen)
    with torch.no_grad():
        act = policy.sample(obs, gen)
    target = torch.full((policy.act_dim,), 0.4)
    adv = -(act - target).pow(2).sum(-1)
    return obs, act, (adv - adv.mean()) / adv.std()


# ---------------------------------------------------------------- GAE
def test_gae_matches_hand_computation_with_termination_and_bootstrap():
    gamma, lam, nan = 0.9, 0.8, float("nan")
    # column 0 terminates at t=1 (t=2 is dead, its values garbage); column 1 runs to the end.
    rew = torch.tensor([[1.0, 1.0], [2.0, 1.0], [nan, 1.0]])
    values = torch.tensor([[0.5, 1.0], [1.0, 2.0], [nan, 3.0]])
    next_values = torch.tensor([[1.0, 2.0], [7.0, 3.0], [nan, 4.0]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    alive = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    adv, ret = gae(rew, values, next_values, terminated, alive, gamma, lam)
    # column 0: no bootstrap at the termination, nothing from the dead step
    a1 = 2.0 - 1.0
    a0 = (1.0 + gamma * 1.0 - 0.5) + gamma * lam * a1
    # column 1: the last step bootstraps with next_values
    b2 = 1.0 + gamma * 4.0 - 3.0
    b1 = (1.0 + gamma * 3.0 - 2.0) + gamma * lam * b2
    b0 = (1.0 + gamma * 2.0 - 1.0) + gamma * lam * b1
    expected = torch.tensor([[a0, b0], [a1, b1], [0.0, b2]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, b0 + 1.0], [a1 + 1.0, b1 + 2.0], [0.0, b2 + 3.0]]), atol=1e-6)


# ---------------------------------------------------------------- baselines
def test_linear_baseline_features_and_masked_fit():
    base = LinearBaseline(obs_dim=2)
    feats = base.features(torch.tensor([[1.0, -2.0]]), torch.tensor([500]))
    assert torch.allclose(feats, torch.tensor([[1.0, -2.0, 1.0, 4.0, 0.5, 0.25, 0.125, 1.0]], dtype=torch.float64))
    assert torch.equal(base.predict(torch.randn(3, 2), torch.arange(3)), torch.zeros(3))  # before a fit

    gen = torch.Generator().manual_seed(0)
    T, N = 50, 8
    obs = torch.randn(T, N, 2, generator=gen)
    t = torch.arange(T).unsqueeze(1).expand(T, N) * 20
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


@pytest.mark.parametrize("method", ["gauss_newton", "double_backward"])
def test_fisher_vector_product_equals_the_hessian_of_the_kl(method):
    policy = make_policy(obs_dim=3, act_dim=2, hidden=(4, 3)).double()
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
    obs, act, adv = batch(policy, n=100)
    weights = torch.rand(100, generator=torch.Generator().manual_seed(0))
    old = policy.log_prob(obs, act).detach()
    for w in (weights, None):
        expected = flat(torch.autograd.grad(weighted_surrogate(policy, obs, act, adv, w, old),
                                            policy_parameters(policy)))
        got = trpo.surrogate_gradient(policy, policy.mean_linearization(obs), act, adv, w)
        assert torch.allclose(got, expected, atol=1e-6)
    assert got[-1] == 0


def test_trpo_step_kl_within_delta_and_close_to_it_when_the_full_step_is_taken():
    delta, full_steps = 0.001, 0
    for seed in range(8):
        policy = make_policy(seed=seed)
        obs, act, adv = batch(policy, n=512, seed=seed)
        before = copy.deepcopy(policy)
        stats = trpo_step(policy, obs, act, adv, None, delta=delta, cg_iters=10, cg_damping=1e-3,
                          line_search_steps=10)
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
    stats = trpo_step(policy, obs, act, adv, None, **TRPO, fvp_subsample=0.25,
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
    stats = trpo_step(policy, obs, act, adv, None, **{**TRPO, "line_search_steps": 2})
    assert not stats["accepted"] and stats["step_fraction"] == 0.0 and stats["kl"] == 0.0
    assert torch.equal(flat(policy_parameters(policy)), before)
    stats = trpo_step(policy, obs, act, adv, None, **{**TRPO, "line_search_steps": 15})
    assert stats["accepted"] and stats["step_fraction"] < 0.25 and stats["kl"] <= TRPO["delta"]


def test_line_search_rejects_a_step_that_does_not_improve_the_surrogate():
    policy = make_policy()
    before = flat(policy_parameters(policy)).detach().clone()
    evaluate = lambda: (torch.tensor(-1.0), torch.tensor(0.0))  # worse than surrogate_before = 0
    accepted, fraction, surr, kl = backtracking_line_search(
        policy, before, torch.ones_like(before), evaluate, 0.0, delta=0.1, steps=5, decay=0.5)
    assert (accepted, fraction, surr, kl) == (False, 0.0, 0.0, 0.0)
    assert torch.equal(flat(policy_parameters(policy)), before)


# ---------------------------------------------------------------- one TRPO iteration
def bandit_rollout(policy, obs, target, gen):
    with torch.no_grad():
        act = policy.sample(obs, gen)
    n = obs.shape[0]
    return dict(obs=obs[None], act=act[None], rew=-(act - target).pow(2).sum(-1)[None],
                next_obs=obs[None], terminated=torch.ones(1, n, dtype=torch.bool), alive=torch.ones(1, n))


def test_policy_update_improves_a_one_step_bandit():
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
                              lam=0.95, normalize_advantages=True, **{**TRPO, "delta": 0.05}, generator=gen)
        assert stats["kl"] <= 0.05
    assert expected_reward() > start + 0.5 * abs(start)


def test_policy_update_ignores_dead_steps_and_guards_nan():
    policy = make_policy()
    gen = torch.Generator().manual_seed(0)
    T, N = 5, 16
    obs = torch.randn(T, N, 4, generator=gen)
    with torch.no_grad():
        act = policy.sample(obs.reshape(-1, 4), gen).reshape(T, N, 2)
    rollout = dict(obs=obs, act=act, rew=-act.pow(2).sum(-1), next_obs=torch.roll(obs, -1, 0),
                   terminated=torch.zeros(T, N, dtype=torch.bool), alive=torch.ones(T, N))
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
