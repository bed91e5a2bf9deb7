"""algos/core/ensemble.py: the batched layer, the Gaussian head (eq. 10, MOPO's bounds), the
dynamics ensemble trained by algos/core/training.py's ModelTrainer (eq. 8, early stopping,
best-weight restore, elites, raw targets) and predict. The stopping rules, the L2 forms and the
bootstrap are pinned in tests/test_training.py."""
import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from algos.core.ensemble import (DynamicsEnsemble, EnsembleLinear, EnsembleMLP, Normalizer,
                                 gaussian_nll, soft_clamp_logvar)
from algos.core.training import ModelTrainer, StoppingRule

OBS, ACT = 3, 2


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def toy_data(n=600, seed=0):
    """s' = s + 0.3 sin(s) + 0.2 (a1 + a2): smooth, learnable by a small MLP in a few epochs."""
    g = gen(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    nxt = obs + 0.3 * torch.sin(obs) + 0.2 * act.sum(1, keepdim=True)
    return obs, act, nxt


def model(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"members": 3, "hidden": [32, 32], **kw}
    return DynamicsEnsemble(OBS, ACT, **kw)


def fit(m, obs, act, nxt, rew=None, *, lr=1e-3, batch_size=64, holdout=0.15, holdout_max=None, max_epochs=3,
        patience=100, min_improvement=0.0, weight_decay=0.0, bound_penalty=0.0, n_elites=None, seed=0,
        refit_normalizers=True):
    """ModelTrainer on a random holdout drawn from gen(seed); the result gains "holdout_idx"."""
    data = {"obs": np.asarray(obs), "act": np.asarray(act), "next_obs": np.asarray(nxt)}
    if rew is not None:
        data["rew"] = np.asarray(rew)
    n = len(data["obs"])
    g = gen(seed)
    perm = torch.randperm(n, generator=g).numpy()
    n_hold = int(holdout * n) if holdout_max is None else min(int(holdout * n), holdout_max)
    train = {k: v[perm[n_hold:]] for k, v in data.items()}
    hold = {k: v[perm[:n_hold]] for k, v in data.items()}
    rule = StoppingRule(patience=patience, max_epochs=max_epochs, min_improvement=min_improvement, keep="best")
    trainer = ModelTrainer(lr=lr, batch_size=batch_size, weight_decay=weight_decay, bound_penalty=bound_penalty,
                           refit_normalizers=refit_normalizers)
    res = trainer.fit(m, train, hold, rule, g, n_elites=n_elites)
    return {**res, "holdout_idx": perm[:n_hold]}


def holdout_mse(m, obs, act, nxt, idx):
    """Per-member MSE in the standardised target space, recomputed through predict()."""
    idx = torch.as_tensor(idx)
    pred = m.predict(obs[idx], act[idx]).next_obs
    return (((pred - nxt[idx]) / m.target_norm.std[:OBS]) ** 2).mean(dim=(1, 2))


# ---- EnsembleLinear / EnsembleMLP ------------------------------------------------------------
def test_batched_layer_equals_per_member_linear():
    torch.manual_seed(0)
    layer = EnsembleLinear(4, 5, 7)
    x = torch.randn(4, 9, 5)
    out = layer(x)
    for m in range(4):
        ref = F.linear(x[m], layer.weight[m].T, layer.bias[m, 0])
        torch.testing.assert_close(out[m], ref)
    # a subset of members computes only those members' maps
    torch.testing.assert_close(layer(x[1:3], slice(1, 3)), out[1:3])
    torch.testing.assert_close(layer(x[[3, 0]], torch.tensor([3, 0])), out[[3, 0]])


def test_layer_init_like_nn_linear():
    torch.manual_seed(0)
    layer = EnsembleLinear(5, 64, 300)
    bound = 1 / math.sqrt(64)
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.9 * bound
    assert layer.bias.shape == (5, 1, 300)
    # members are initialised independently
    assert not torch.equal(layer.weight[0], layer.weight[1])


def test_gaussian_nll_matches_hand_computation():
    mean = torch.tensor([[[0.0, 1.0], [2.0, -1.0]]])       # M=1, N=2, D=2
    logvar = torch.tensor([[[0.0, math.log(4.0)], [math.log(0.25), 0.0]]])
    target = torch.tensor([[[1.0, 3.0], [1.5, -1.0]]])
    # eq. 10 per sample: sum_d (mu-y)^2/var + log var
    s1 = (1.0 / 1.0 + 0.0) + (4.0 / 4.0 + math.log(4.0))
    s2 = (0.25 / 0.25 + math.log(0.25)) + (0.0 + 0.0)
    expected = (s1 + s2) / 2 / 2                               # mean over samples, / D
    assert gaussian_nll(mean, logvar, target).item() == pytest.approx(expected, rel=1e-6)


def test_soft_bounds_keep_logvar_inside():
    lo, hi = torch.tensor([-10.0]), torch.tensor([0.5])
    raw = torch.linspace(-1e4, 1e4, 20001)
    lv = soft_clamp_logvar(raw, lo, hi)
    # the outer softplus may overshoot max by log(1 + e^(min - max)) (2.8e-5 here): MOPO's formula
    overshoot = math.log1p(math.exp(-10.5))
    assert lv.min() >= -10.0 and lv.max() <= 0.5 + overshoot + 1e-6
    assert (lv.diff() >= 0).all()                               # monotone in raw
    assert soft_clamp_logvar(torch.tensor([-4.0]), lo, hi).item() == pytest.approx(-4.0, abs=0.02)
    net = EnsembleMLP(2, 3, 4, [8], probabilistic=True, logvar_max_init=0.5, logvar_min_init=-10)
    with torch.no_grad():
        net.layers[-1].bias[..., 4:] = 1e3                    # raw log-variance far above max
    _, logvar = net(torch.randn(2, 5, 3))
    assert (logvar <= 0.5 + 1e-4).all() and (logvar >= -10).all()


def test_learnable_bounds_get_gradients_fixed_ones_are_buffers():
    fixed = EnsembleMLP(2, 3, 4, [8], probabilistic=True)
    assert "max_logvar" in dict(fixed.named_buffers()) and "max_logvar" not in dict(fixed.named_parameters())
    net = EnsembleMLP(2, 3, 4, [8], probabilistic=True, learn_logvar_bounds=True)
    assert {"max_logvar", "min_logvar"} <= set(dict(net.named_parameters()))
    with torch.no_grad():
        net.layers[-1].bias[0, :, 4:] = 3.0                   # member 0 near the upper bound
        net.layers[-1].bias[1, :, 4:] = -12.0                 # member 1 near the lower bound
    _, logvar = net(torch.randn(2, 5, 3))
    logvar.sum().backward()
    assert net.max_logvar.grad.abs().min() > 0 and net.min_logvar.grad.abs().min() > 0


def test_bound_penalty_is_in_the_loss():
    """MOPO: 0.01 (sum max_logvar - sum min_logvar) pulls the bounds together."""
    obs, act, nxt = toy_data(300)
    base = model(probabilistic=True, learn_logvar_bounds=True)
    widths = {}
    for penalty in (0.0, 5.0):
        m = copy.deepcopy(base)
        fit(m, obs, act, nxt, lr=1e-2, batch_size=64, max_epochs=2, patience=10, bound_penalty=penalty,
            min_improvement=-1e9)            # every epoch "improves": the last weights are kept
        widths[penalty] = (m.net.max_logvar.sum() - m.net.min_logvar.sum()).item()
    assert widths[5.0] < widths[0.0] - 0.1


def test_weight_decay_penalty_per_layer():
    net = EnsembleMLP(2, 3, 4, [8, 8])
    decays = [0.0, 0.5, 2.0]
    net.weight_decay_penalty(decays).backward()
    for wd, layer in zip(decays, net.layers):
        grad = layer.weight.grad if layer.weight.grad is not None else torch.zeros_like(layer.weight)
        torch.testing.assert_close(grad, wd * layer.weight.detach())
        assert layer.bias.grad is None                        # biases are not decayed
    with pytest.raises(ValueError):
        net.weight_decay_penalty([0.1, 0.1])                  # one value per layer


def test_weight_decay_applied_in_fit():
    obs, act, _ = toy_data(300)
    base = model()
    norms = {}
    for wd in (0.0, 1.0):
        m = copy.deepcopy(base)
        fit(m, obs, act, obs, lr=1e-2, batch_size=64, max_epochs=3, patience=10, weight_decay=[0.0, 0.0, wd],
            min_improvement=-1e9)
        norms[wd] = (m.net.layers[-1].weight.norm().item(), m.net.layers[0].weight.norm().item())
    assert norms[1.0][0] < 0.9 * norms[0.0][0]


# ---- trained by ModelTrainer --------------------------------------------------------------------
def test_deterministic_fit_learns():
    """Eq. 8: the validation MSE drops well below its starting value."""
    obs, act, nxt = toy_data(800)
    m = model()
    res = fit(m, obs, act, nxt, lr=3e-3, batch_size=32, holdout=0.15, max_epochs=5)
    val = np.array(res["val_loss"])
    assert res["epochs"] == 5 and len(res["train_loss"]) == 5 and val.shape == (5, 3)
    assert res["n_holdout"] == 120 and len(res["holdout_idx"]) == 120
    assert max(res["best_val"]) < 0.5 * val[0].min()           # val[0]: after the first epoch
    assert res["train_loss"][-1] < 0.2 * res["train_loss"][0]


def test_fit_restores_each_members_best_weights():
    """Pure-noise targets and a few samples: the members overfit, their validation loss rises
    after its minimum; fit must hand back each member's best epoch, not the last one."""
    g = gen(1)
    obs, act = torch.randn(60, OBS, generator=g), torch.randn(60, ACT, generator=g)
    nxt = obs + torch.randn(60, OBS, generator=g)
    m = model(hidden=[64, 64])
    res = fit(m, obs, act, nxt, lr=1e-2, batch_size=16, holdout=0.3, max_epochs=15)
    val = np.array(res["val_loss"])
    np.testing.assert_allclose(res["best_val"], val.min(0), rtol=1e-6)
    assert (val[-1] > 1.05 * val.min(0)).all(), "the setting must overfit"
    now = holdout_mse(m, obs, act, nxt, res["holdout_idx"])
    np.testing.assert_allclose(now.numpy(), res["best_val"], rtol=1e-4)
    assert res["best_epoch"] == list(val.argmin(0) + 1)


def test_early_stopping_patience_and_threshold():
    obs, act, nxt = toy_data(300)
    base = model()
    # lr = 0: only the first validation improves (the best starts at +inf) -> stop `patience`
    # epochs later, weights untouched
    m = copy.deepcopy(base)
    res = fit(m, obs, act, nxt, lr=0.0, batch_size=64, patience=2, max_epochs=50)
    assert res["epochs"] == 3
    for p, q in zip(m.net.parameters(), base.net.parameters()):
        torch.testing.assert_close(p, q)
    # a small lr improves every epoch, but never by 50 %: the relative threshold decides
    runs = {thr: fit(copy.deepcopy(base), obs, act, nxt, lr=1e-4, batch_size=64, patience=2, max_epochs=6,
                     min_improvement=thr)["epochs"]
            for thr in (0.0, 0.5)}
    assert runs == {0.0: 6, 0.5: 3}


def test_elites_are_lowest_validation_members():
    obs, act, nxt = toy_data(400)
    m = model(members=5)
    with torch.no_grad():                                       # handicap members 1 and 3
        for k in (1, 3):
            m.net.layers[-1].weight[k] *= 50
    res = fit(m, obs, act, nxt, lr=1e-3, batch_size=64, max_epochs=2, patience=5, n_elites=3)
    val = holdout_mse(m, obs, act, nxt, res["holdout_idx"])
    assert set(m.elites.tolist()) == set(torch.argsort(val)[:3].tolist()) == set(res["elites"])
    assert not {1, 3} & set(res["elites"])
    assert "elites" in m.state_dict()


def test_probabilistic_reward_target_fit_and_holdout_max():
    """MOPO's model: Gaussian NLL on [delta s, r], holdout min(fraction, holdout_max)."""
    obs, act, nxt = toy_data(500)
    rew = obs[:, 0] - 0.1 * act.square().sum(1)
    m = model(probabilistic=True, reward_target=True, learn_logvar_bounds=True, activation="swish")
    res = fit(m, obs, act, nxt, rew, lr=3e-3, batch_size=64, holdout=0.2, holdout_max=50, max_epochs=10,
              patience=6, min_improvement=0.01, weight_decay=[2.5e-5, 5e-5, 1e-4], bound_penalty=0.01)
    assert res["n_holdout"] == 50
    assert res["train_loss"][-1] < res["train_loss"][0]
    pred = m.predict(obs[:7], act[:7])
    assert pred.next_obs.shape == (3, 7, OBS) and pred.reward.shape == (3, 7)
    assert pred.next_obs_std.shape == (3, 7, OBS) and pred.reward_std.shape == (3, 7)
    assert (pred.next_obs_std > 0).all()
    assert (pred.reward.mean(0) - rew[:7]).abs().mean() < 0.5


def test_non_finite_loss_raises():
    obs, act, nxt = toy_data(100)
    nxt[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="phase=model"):
        fit(model(), obs, act, nxt, lr=1e-3, batch_size=32, max_epochs=2)


def test_fit_is_reproducible_with_the_generator():
    obs, act, nxt = toy_data(200)
    a, b = model(), model()
    ra = fit(a, obs, act, nxt, lr=1e-3, batch_size=32, max_epochs=2, seed=3)
    rb = fit(b, obs.numpy(), act.numpy(), nxt.numpy(), lr=1e-3, batch_size=32, max_epochs=2, seed=3)
    assert ra["val_loss"] == rb["val_loss"]


def test_warm_start_refit_normalizers_flag():
    obs, act, nxt = toy_data(300)
    m = model()
    fit(m, obs, act, nxt, max_epochs=1)
    stats = m.input_norm.mean.clone()
    fit(m, obs + 5, act, nxt + 5, max_epochs=1, refit_normalizers=False)
    torch.testing.assert_close(m.input_norm.mean, stats)
    fit(m, obs + 5, act, nxt + 5, max_epochs=1)
    assert m.input_norm.mean[0] == pytest.approx(stats[0].item() + 5, abs=1e-4)


# ---- predict ----------------------------------------------------------------------------------
def test_predict_member_int_and_per_sample_equal_slices_of_all():
    obs, act, _ = toy_data(20)
    m = model(members=4, probabilistic=True, reward_target=True)
    m.input_norm.fit(torch.cat([obs, act], 1))
    full = m.predict(obs, act)
    one = m.predict(obs.numpy(), act.numpy(), member=2)
    for f_all, f_one in zip(full, one):
        torch.testing.assert_close(f_one[0], f_all[2])
    per = torch.arange(20) % 4
    picked = m.predict(obs, act, member=per)
    rows = torch.arange(20)
    for f_all, f_per in zip(full, picked):
        torch.testing.assert_close(f_per, f_all[per, rows])
    # member=int touches only that member's weights: a broken other member does not matter
    with torch.no_grad():
        m.net.layers[0].weight[3] = float("nan")
    assert torch.isfinite(m.predict(obs, act, member=1).next_obs).all()


def test_normalised_delta_targets_round_trip():
    """Targets are standardised s' - s (and r): a net outputting 0 predicts s + mean delta."""
    obs, act, nxt = toy_data(200)
    rew = obs[:, 1] * 2 + 3
    m = model(reward_target=True)
    res = fit(m, obs, act, nxt, rew, lr=0.0, batch_size=64, max_epochs=1, patience=1, holdout=0.0)
    delta = nxt - obs       # holdout 0: the statistics are those of all rows (the training split)
    torch.testing.assert_close(m.target_norm.mean, torch.cat([delta.mean(0), rew.mean().view(1)]))
    torch.testing.assert_close(m.target_norm.std, torch.cat([delta.std(0, unbiased=False),
                                                             rew.std(unbiased=False).view(1)]))
    with torch.no_grad():
        m.net.layers[-1].weight.zero_()
        m.net.layers[-1].bias.zero_()
    pred = m.predict(obs[:4], act[:4])
    torch.testing.assert_close(pred.next_obs, (obs[:4] + delta.mean(0)).expand(3, -1, -1))
    torch.testing.assert_close(pred.reward, rew.mean().expand(3, 4))
    assert res["epochs"] == 1


def test_normalizer_round_trip_and_constant_dims():
    x = torch.randn(50, 3) * torch.tensor([2.0, 0.0, 5.0]) + 1
    norm = Normalizer(3)
    norm.fit(x)
    assert norm.std[1] == 1.0                                    # constant dim: left unscaled
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)
    z = norm.normalize(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_predict_trajectory_open_loop_replay():
    obs, act, nxt = toy_data(100)
    m = model()
    fit(m, obs, act, nxt, batch_size=32, max_epochs=1)
    actions = torch.rand(2, 4, ACT) * 2 - 1
    traj = m.predict_trajectory(obs[:2].numpy(), actions.numpy())
    assert traj.shape == (2, 4, OBS)
    s = obs[:2]
    for t in range(4):                                           # feeds its own predictions back
        s = m.predict(s, actions[:, t]).next_obs.mean(0)
        torch.testing.assert_close(traj[:, t], s)
    one = m.predict_trajectory(obs[:2], actions, member=1)
    torch.testing.assert_close(one[:, 0], m.predict(obs[:2], actions[:, 0], member=1).next_obs[0])


@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_inference_path_equals_training_path(activation):
    """Without autograd the activations run in place; the outputs must not change."""
    net = EnsembleMLP(3, 4, 2, [8, 8], activation=activation, probabilistic=True)
    x = torch.randn(3, 5, 4)
    mean, logvar = net(x)
    with torch.no_grad():
        mean0, logvar0 = net(x)
    torch.testing.assert_close(mean0, mean.detach())
    torch.testing.assert_close(logvar0, logvar.detach())


def test_predict_trajectory_clip_obs_keeps_the_replay_in_the_box():
    """Fig. 6 replay with clip_obs=(low, high): every predicted state is clamped, as in training."""
    obs, act, nxt = toy_data(100)
    m = model()
    fit(m, obs, act, nxt * 3, batch_size=32, max_epochs=1)   # an expanding model
    actions = torch.rand(2, 6, ACT) * 2 - 1
    low, high = -0.5 * torch.ones(OBS), 0.5 * torch.ones(OBS)
    traj = m.predict_trajectory(obs[:2], actions, clip_obs=(low.numpy(), high.numpy()))
    assert traj.shape == (2, 6, OBS) and traj.min() >= -0.5 and traj.max() <= 0.5
    assert m.predict_trajectory(obs[:2], actions).abs().max() > 0.5            # without it, it leaves


@pytest.mark.parametrize("kw", [{"activation": "relu"},
                                {"activation": "swish", "probabilistic": True, "reward_target": True}])
def test_numpy_next_obs_means_equal_predict(kw):
    """The numpy snapshot (MUSBO's exploration) folds both standardisations into the weights;
    it must give predict()'s next-state means for every member, and stay frozen afterwards."""
    m = model(**kw)
    obs, act, nxt = toy_data(200)
    rew = torch.randn(200)
    fit(m, obs * 3 + 1, act, nxt * 3 + 1, rew if kw.get("reward_target") else None,
        max_epochs=2)  # normalisers far from (0, 1), so a missed fold would show
    snapshot = m.numpy_next_obs_means()
    expected = m.predict(obs[:7] * 3 + 1, act[:7]).next_obs.numpy()
    got = snapshot((obs[:7] * 3 + 1).numpy(), act[:7].numpy())
    assert got.shape == (3, 7, OBS) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.net.layers[0].weight.add_(1.0)
    np.testing.assert_array_equal(snapshot((obs[:7] * 3 + 1).numpy(), act[:7].numpy()), got)


@pytest.mark.parametrize("probabilistic", [False, True])
def test_blocked_inference_equals_one_block(probabilistic, monkeypatch):
    """No-grad predict runs in blocks of INFERENCE_ROWS rows; the result must not depend on it."""
    m = model(probabilistic=probabilistic)
    obs, act, nxt = toy_data(700)
    fit(m, obs, act, nxt, max_epochs=1)
    members = torch.arange(700) % 3
    with torch.no_grad():
        monkeypatch.setattr(DynamicsEnsemble, "INFERENCE_ROWS", 64)   # 11 blocks, the last one short
        blocked, blocked_per_sample = m.predict(obs, act), m.predict(obs, act, member=members)
        monkeypatch.setattr(DynamicsEnsemble, "INFERENCE_ROWS", 10**9)
        whole = m.predict(obs, act)
    torch.testing.assert_close(blocked.next_obs, whole.next_obs, rtol=1e-6, atol=1e-6)
    if probabilistic:
        torch.testing.assert_close(blocked.next_obs_std, whole.next_obs_std, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(blocked_per_sample.next_obs, whole.next_obs[members, torch.arange(700)],
                               rtol=1e-6, atol=1e-6)
