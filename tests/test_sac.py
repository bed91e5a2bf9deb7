"""SAC (algos/core/sac.py): the tanh-Gaussian log-likelihood, the twin-Q minimum target, the
Polyak update, the temperature update, the fused backward (each loss reaches only its own
parameters), the NaN guard, the numpy policies and the replay buffer / real-model mix."""
import io
import math

import numpy as np
import pytest
import torch

from algos.core.sac import SAC, ReplayBuffer, TanhGaussianActor, mixed_batch

OBS, ACT = 5, 2


def make_sac(target_entropy=-2.0, seed=0, hidden=(16, 16), tau=0.1, gamma=0.9):
    return SAC(OBS, ACT, hidden=list(hidden), lr=1e-2, tau=tau, gamma=gamma, batch_size=32,
               target_entropy=target_entropy, generator=torch.Generator().manual_seed(seed))


def make_batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, OBS, generator=g), "act": torch.rand(n, ACT, generator=g) * 2 - 1,
            "rew": torch.randn(n, generator=g), "next_obs": torch.randn(n, OBS, generator=g),
            "terminated": torch.zeros(n)}


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    """log pi(a|s) of a = tanh(u), u ~ N(mu, sigma): the Gaussian density minus log|da/du|."""
    actor = TanhGaussianActor(OBS, ACT, [8], torch.Generator().manual_seed(0))
    obs = torch.randn(64, OBS)
    act, logp = actor.sample(obs, torch.Generator().manual_seed(1))
    mean, log_std = actor(obs)
    u = mean + log_std.exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    ref = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
           - torch.distributions.TanhTransform().log_abs_det_jacobian(u, torch.tanh(u))).sum(-1)
    torch.testing.assert_close(act, torch.tanh(u))
    assert act.abs().max() <= 1
    torch.testing.assert_close(logp, ref)


def test_sb3_epsilon_log_det_caps_the_saturated_actions_penalty_and_is_exact_elsewhere():
    """log_det="sb3_epsilon": log pi uses log(1 - tanh(u)^2 + 1e-6), Stable-Baselines3's form: equal
    to the exact one where the action is far from the bounds, capped at log(1e-6) per saturated
    dimension (the exact form keeps growing)."""
    exact = TanhGaussianActor(OBS, ACT, [8], torch.Generator().manual_seed(0))
    eps = TanhGaussianActor(OBS, ACT, [8], torch.Generator().manual_seed(0), log_det="sb3_epsilon")
    with torch.no_grad():  # the same weights; push the mean far out to saturate the tanh
        eps.load_state_dict(exact.state_dict())
    for actor in (exact, eps):
        actor.layers[-1].bias.data[:ACT] = 0.0
    obs = torch.zeros(4, OBS)
    _, logp_exact = exact.sample(obs, torch.Generator().manual_seed(1))
    _, logp_eps = eps.sample(obs, torch.Generator().manual_seed(1))
    mean, log_std = exact(obs)
    u = mean + log_std.exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logp_eps - logp_exact, (torch.log1p(-torch.tanh(u) ** 2)
                                                     - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)).sum(-1))
    for actor in (exact, eps):
        actor.layers[-1].bias.data[:ACT] = 30.0     # tanh(u) == 1 in float32
    _, logp_exact = exact.sample(obs, torch.Generator().manual_seed(1))
    _, logp_eps = eps.sample(obs, torch.Generator().manual_seed(1))
    assert (logp_exact - logp_eps > 20).all()       # exact: about 2 u per dimension; sb3: capped
    with pytest.raises(ValueError, match="log_det"):
        TanhGaussianActor(OBS, ACT, [8], log_det="clipped")


@pytest.mark.parametrize("init", ["glorot", "torch_default"])
def test_init_draws_softlearnings_or_torchs_distribution(init):
    """init="glorot": U(+-sqrt(6 / (fan_in + fan_out))) weights and zero biases (MOPO's Keras
    layers); "torch_default": weights and biases U(+-1 / sqrt(fan_in)) (nn.Linear's, SB3's)."""
    sac = SAC(OBS, ACT, hidden=[256, 256], lr=1e-3, tau=0.1, gamma=0.9, batch_size=8, target_entropy=-2.0,
              generator=torch.Generator().manual_seed(0), init=init)
    hidden_actor, hidden_q = sac.actor.layers[1], sac.critic.layers[1]
    fan_in, fan_out = 256, 256
    bound = math.sqrt(6 / (fan_in + fan_out)) if init == "glorot" else 1 / math.sqrt(fan_in)
    for weight, bias in ((hidden_actor.weight, hidden_actor.bias), (hidden_q.weight, hidden_q.bias)):
        assert weight.abs().max() <= bound and weight.abs().max() > 0.98 * bound
        assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound   # uniform's std
        if init == "glorot":
            assert (bias == 0).all()
        else:
            assert bias.abs().max() <= bound and bias.std() > 0.5 * bound / math.sqrt(3)
    with pytest.raises(ValueError, match="init"):
        SAC(OBS, ACT, hidden=[8], lr=1e-3, tau=0.1, gamma=0.9, batch_size=8, target_entropy=-2.0, init="xavier")


def test_td_target_uses_the_minimum_of_the_twin_target_q():
    """y = r + gamma (1 - d) (min(Q'_1, Q'_2) - alpha log pi): with constant target nets
    Q'_1 = 5, Q'_2 = 2 and alpha ~ 0, y = r + gamma * 2 (and r where terminated)."""
    sac = make_sac(gamma=0.9)
    last = sac.critic_target.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, 2.0]).reshape(2, 1, 1))
        sac.log_alpha.fill_(-60.0)
    rew = torch.tensor([1.0, -1.0, 0.5])
    terminated = torch.tensor([False, False, True])
    y = sac.td_target(rew, torch.randn(3, OBS), terminated)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 2.0, -1.0 + 0.9 * 2.0, 0.5]))


def test_soft_target_update_is_polyak_with_tau():
    sac = make_sac(tau=0.1)
    with torch.no_grad():
        for p in sac.critic.parameters():
            p.fill_(1.0)
        for p in sac.critic_target.parameters():
            p.fill_(3.0)
    sac.soft_update_targets()
    for p in sac.critic_target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.9 * 3.0 + 0.1 * 1.0))


def test_target_networks_start_equal_and_only_follow_by_tau():
    sac = make_sac(tau=0.1)
    for p, q in zip(sac.critic.parameters(), sac.critic_target.parameters()):
        assert torch.equal(p, q) and not q.requires_grad
    before = [p.clone() for p in sac.critic_target.parameters()]
    sac.update(make_batch())
    for b, p, q in zip(before, sac.critic.parameters(), sac.critic_target.parameters()):
        torch.testing.assert_close(q, 0.9 * b + 0.1 * p)


@pytest.mark.parametrize("target_entropy, direction", [(-50.0, -1), (50.0, +1)])
def test_temperature_falls_above_and_rises_below_the_target_entropy(target_entropy, direction):
    """The policy's entropy (~2 nats here) is above a target of -50, so alpha must fall; below
    a target of +50, so alpha must rise."""
    sac = make_sac(target_entropy=target_entropy)
    assert sac.alpha == 1.0  # softlearning starts from log alpha = 0
    for _ in range(3):
        sac.update(make_batch())
    assert (sac.alpha - 1.0) * direction > 0


def test_each_loss_reaches_only_its_own_parameters():
    """The fused backward is correct only if the policy loss leaves the critic alone, the
    Bellman loss leaves the actor alone, and only the alpha loss moves log alpha."""
    sac = make_sac()
    losses = sac.losses(make_batch())
    actor, critic = list(sac.actor.parameters()), list(sac.critic.parameters())
    params = actor + critic + [sac.log_alpha]

    def grads(loss):
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    def nonzero(gs, group):
        idx = {"actor": range(len(actor)), "critic": range(len(actor), len(actor) + len(critic)),
               "alpha": [len(params) - 1]}[group]
        return any(gs[i] is not None and gs[i].abs().sum() > 0 for i in idx)

    g_q, g_pi, g_alpha = grads(losses["q_loss"]), grads(losses["policy_loss"]), grads(losses["alpha_loss"])
    assert nonzero(g_q, "critic") and not nonzero(g_q, "actor") and not nonzero(g_q, "alpha")
    assert nonzero(g_pi, "actor") and not nonzero(g_pi, "critic") and not nonzero(g_pi, "alpha")
    assert nonzero(g_alpha, "alpha") and not nonzero(g_alpha, "actor") and not nonzero(g_alpha, "critic")


def test_non_finite_batch_raises_naming_the_phase_and_leaves_weights_untouched():
    sac = make_sac()
    batch = make_batch()
    batch["rew"][3] = float("nan")
    before = [p.clone() for p in sac.actor.parameters()]
    with pytest.raises(FloatingPointError, match="phase=policy"):
        sac.update(batch)
    assert all(torch.equal(b, p) for b, p in zip(before, sac.actor.parameters()))


def test_numpy_policies_shapes_determinism_and_frozen_copy():
    sac = make_sac()
    obs = np.random.default_rng(0).normal(size=(7, OBS)).astype(np.float32)
    det = sac.numpy_policy(deterministic=True)
    a = det(obs)
    assert a.shape == (7, ACT) and a.dtype == np.float32 and np.abs(a).max() < 1
    np.testing.assert_allclose(a, torch.tanh(sac.actor(torch.as_tensor(obs))[0]).detach().numpy(), atol=1e-5)
    # the stochastic policy samples u ~ N(mu, sigma) with the actor's own mu, sigma
    mean, log_std = (t.detach().numpy()[0] for t in sac.actor(torch.as_tensor(obs[:1])))
    u = np.arctanh(sac.numpy_policy(False, seed=0)(np.repeat(obs[:1], 20000, 0)).astype(np.float64))
    np.testing.assert_allclose(u.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(u.std(0), np.exp(log_std), rtol=0.05)
    s1, s2 = sac.numpy_policy(False, seed=3), sac.numpy_policy(False, seed=3)
    np.testing.assert_array_equal(s1(obs), s2(obs))
    assert not np.allclose(s1(obs), a)
    for _ in range(3):
        sac.update(make_batch())
    np.testing.assert_array_equal(det(obs), a)  # handed-out policy does not follow training
    assert not np.allclose(sac.numpy_policy(True)(obs), a)


def test_state_dict_round_trips_through_weights_only_load():
    sac = make_sac()
    for _ in range(2):
        sac.update(make_batch())
    buf = io.BytesIO()
    torch.save(sac.state_dict(), buf)
    buf.seek(0)
    other = make_sac(seed=99)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.updates == 2 and other.alpha == sac.alpha
    sac.generator, other.generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out_a, out_b = sac.update(make_batch(seed=7)), other.update(make_batch(seed=7))
    assert out_a == out_b  # same weights, same Adam moments, same noise: the same step


def test_replay_buffer_is_fifo_and_mixed_batch_takes_real_ratio_of_real_rows():
    buf = ReplayBuffer(4, OBS, ACT)
    for v in range(6):  # values 0..5; capacity 4 keeps 2..5
        buf.add({"obs": np.full((1, OBS), v), "act": np.zeros((1, ACT)), "rew": [v],
                 "next_obs": np.zeros((1, OBS)), "terminated": [False]})
    assert len(buf) == 4 and sorted(buf.data["rew"].tolist()) == [2, 3, 4, 5]

    def filled(value, n):
        return ReplayBuffer.from_arrays({"obs": np.full((n, OBS), value, np.float32),
                                         "act": np.zeros((n, ACT)), "rew": np.full(n, value),
                                         "next_obs": np.zeros((n, OBS)), "terminated": np.zeros(n, bool)})

    real, model = filled(0.0, 50), filled(1.0, 50)
    g = torch.Generator().manual_seed(0)
    batch = mixed_batch(real, model, 100, 0.05, g)
    assert (batch["rew"] == 0).sum() == 5 and (batch["rew"] == 1).sum() == 95
    batch = mixed_batch(real, model, 256, 0.05, g)  # MOPO's int(256 * 0.05) = 12 real rows
    assert (batch["rew"] == 0).sum() == 12 and batch["obs"].shape == (256, OBS)
    assert batch["terminated"].dtype == torch.float32
    assert math.isclose(float(mixed_batch(real, model, 20, 1.0, g)["rew"].sum()), 0.0)
