"""algos.core.policy: the tanh-mean Gaussian policy, its closed-form KL, its numpy fast path and
its hand-written Jacobian products (the Gauss-Newton Fisher-vector product of TRPO rests on them)."""
import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence
from torch.func import functional_call, jvp

from algos.core.policy import GaussianPolicy

def make_policy(obs_dim=5, act_dim=3, hidden=(16, 16), seed=0, **kw):
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim, act_dim, hidden=hidden, **kw)
    policy.set_obs_normalizer(torch.linspace(-1, 1, obs_dim), torch.linspace(0.5, 2.0, obs_dim))
    return policy


def normal(mean, log_std):
    return Independent(Normal(mean, log_std.exp()), 1)


def test_distribution_tanh_mean_global_log_std_clamped():
    policy = make_policy(init_log_std=-0.5, min_log_std=-2.0)
    obs = 10 * torch.randn(64, 5)
    mean, log_std = policy.distribution(obs)
    assert torch.allclose(mean, torch.tanh(policy.pre_tanh_mean(obs)))
    assert mean.abs().max() < 1
    assert torch.allclose(log_std, torch.full((64, 3), -0.5))
    with torch.no_grad():
        policy.log_std.fill_(-9.0)
    assert torch.allclose(policy.distribution(obs)[1], torch.full((64, 3), -2.0))


def test_obs_normalizer_is_applied_and_in_state_dict():
    policy = make_policy()
    obs = torch.randn(8, 5)
    plain = GaussianPolicy(5, 3, hidden=(16, 16))
    plain.load_state_dict({k: v for k, v in policy.state_dict().items() if not k.startswith("obs_")}, strict=False)
    normalised = (obs - policy.obs_mean) / policy.obs_std
    assert torch.allclose(policy.mean_action(obs), plain.mean_action(normalised), atol=1e-6)
    assert {"obs_mean", "obs_std"} <= set(policy.state_dict())


def test_log_prob_and_kl_match_torch_distributions():
    policy = make_policy()
    obs, act = torch.randn(32, 5), torch.randn(32, 3)
    mean, log_std = policy.distribution(obs)
    assert torch.allclose(policy.log_prob(obs, act), normal(mean, log_std).log_prob(act), atol=1e-5)
    old_mean = mean.detach() + 0.3 * torch.randn_like(mean)
    old_log_std = log_std.detach() + 0.2 * torch.randn_like(log_std)
    expected = kl_divergence(normal(old_mean, old_log_std), normal(mean, log_std)).mean()
    assert torch.allclose(policy.kl_from(old_mean, old_log_std, obs), expected, atol=1e-5)
    assert policy.kl_from(mean.detach(), log_std.detach(), obs).abs() < 1e-6


def test_sample_is_unclipped_gaussian_around_the_mean():
    policy = make_policy(init_log_std=0.0)
    obs = torch.zeros(20000, 5)
    act = policy.sample(obs, torch.Generator().manual_seed(0))
    mean = policy.mean_action(obs[:1])
    assert torch.allclose(act.mean(0), mean[0], atol=0.03)
    assert torch.allclose(act.std(0), torch.ones(3), atol=0.03)
    assert act.abs().max() > 1  # not clipped


def test_numpy_policy_deterministic_is_the_tanh_mean():
    policy = make_policy()
    obs = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    expected = policy.mean_action(torch.as_tensor(obs)).detach().numpy()
    act_fn = policy.numpy_policy("deterministic")
    np.testing.assert_allclose(act_fn(obs), expected, atol=1e-5)
    np.testing.assert_allclose(act_fn(obs[:1]), expected[:1], atol=1e-5)  # the batch-1 path
    assert act_fn(obs[0]).shape == (3,)


def test_numpy_policy_noise_has_the_requested_std_and_is_seeded():
    policy = make_policy(init_log_std=-1.0)
    obs = np.zeros((1, 5), np.float32)
    mean = policy.numpy_policy()(obs)[0]
    fixed = policy.numpy_policy("fixed_std", std=0.1, seed=3)
    draws = np.concatenate([fixed(obs) for _ in range(4000)])
    np.testing.assert_allclose(draws.std(0), 0.1, rtol=0.06)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.01)
    again = policy.numpy_policy("fixed_std", std=0.1, seed=3)
    np.testing.assert_array_equal(np.concatenate([again(obs) for _ in range(4000)]), draws)
    stochastic = policy.numpy_policy("stochastic", seed=1)
    draws = stochastic(np.zeros((8000, 5), np.float32))
    np.testing.assert_allclose(draws.std(0), np.exp(-1.0), rtol=0.06)
    with pytest.raises(ValueError):
        policy.numpy_policy("fixed_std")


def test_mean_linearization_matches_autograd_jvp_and_vjp():
    policy = make_policy().double()
    obs = torch.randn(40, 5, dtype=torch.float64)
    names = [n for n, _ in policy.named_parameters() if n != "log_std"]
    primals = tuple(p.detach() for p in policy.mean_parameters())
    tangents = tuple(torch.randn_like(p) for p in primals)

    def mean_of(*params):
        return functional_call(policy, dict(zip(names, params)), (obs,))[0]

    lin = policy.linearization(obs)
    _, expected_jv = jvp(mean_of, primals, tangents)
    assert torch.allclose(lin.jvp(list(tangents)), expected_jv, atol=1e-10)
    cotangent = torch.randn(40, 3, dtype=torch.float64)
    expected_vjp = torch.autograd.grad(policy.mean_action(obs), policy.mean_parameters(), cotangent)
    for got, want in zip(lin.vjp(cotangent), expected_vjp):
        assert torch.allclose(got, want, atol=1e-10)


# ---------------------------------------------------------------- BREMEN's state-dependent log-std
def test_state_dependent_log_std_is_the_tanh_bounded_head():
    """log_std(s) = lo + (hi - lo) (tanh(W h(s) + b) + 1) / 2 (BREMEN model/policies.py:133)."""
    policy = make_policy(log_std="state_dependent", min_log_std=-5.0, max_log_std=0.0)
    obs = torch.randn(64, 5)
    with torch.no_grad():
        policy.log_std_weight.normal_()      # make the dependence on s visible
    h = policy.hidden(obs)
    pre = h @ policy.log_std_weight.T + policy.log_std
    _, log_std = policy.distribution(obs)
    assert torch.allclose(log_std, -5.0 + 2.5 * (torch.tanh(pre) + 1.0), atol=1e-6)
    assert log_std.std(0).min() > 0.01                       # depends on the state
    with torch.no_grad():
        policy.log_std.fill_(-100.0)
        assert torch.allclose(policy.distribution(obs)[1], torch.full((64, 3), -5.0))
        policy.log_std.fill_(100.0)
        assert torch.allclose(policy.distribution(obs)[1], torch.zeros(64, 3))
    fresh = make_policy(log_std="state_dependent")
    assert (fresh.distribution(obs)[1] + 2.5).abs().max() < 0.1   # starts mid-range, as BREMEN's init
    assert [p.shape for p in fresh.log_std_parameters()] == [(3, 16), (3,)]
    with pytest.raises(ValueError, match="policy.log_std"):
        make_policy(log_std="per_state")
    with pytest.raises(ValueError, match="clamped_log_std"):
        fresh.clamped_log_std()


def test_state_dependent_linearization_covers_both_heads():
    policy = make_policy(log_std="state_dependent").double()
    with torch.no_grad():
        policy.log_std_weight.normal_()
    obs = torch.randn(40, 5, dtype=torch.float64)
    params = policy.trpo_parameters()
    names = {id(p): n for n, p in policy.named_parameters()}
    primals = tuple(p.detach() for p in params)
    tangents = tuple(torch.randn_like(p) for p in primals)

    def outputs_of(*ps):
        mean, log_std = functional_call(policy, {names[id(p)]: v for p, v in zip(params, ps)}, (obs,))
        return torch.cat([mean, log_std], 1)

    lin = policy.linearization(obs)
    _, expected_jv = jvp(outputs_of, primals, tangents)
    assert torch.allclose(lin.jvp(list(tangents)), expected_jv, atol=1e-10)
    cotangent = torch.randn(40, 6, dtype=torch.float64)
    expected_vjp = torch.autograd.grad(outputs_of(*params), params, cotangent)
    got = lin.vjp(cotangent)
    assert len(got) == len(params)
    for g, want in zip(got, expected_vjp):
        assert torch.allclose(g, want, atol=1e-10)


def test_numpy_policy_stochastic_uses_the_state_dependent_std():
    policy = make_policy(log_std="state_dependent")
    obs = np.zeros((20000, 5), np.float32)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-3.0, 0.0, 3.0]))
        expected = policy.distribution(torch.as_tensor(obs[:1]))[1].exp().numpy()[0]
    draws = policy.numpy_policy("stochastic", seed=0, clip=False)(obs)
    np.testing.assert_allclose(draws.std(0), expected, rtol=0.05)
