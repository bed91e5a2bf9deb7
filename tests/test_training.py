"""algos/core/training.py: the stopping rules of MUSBO, BREMEN and MOPO on scripted holdout
losses, the weights each keeps, BREMEN's L2 form, MOPO's bootstrap, and the diagnostics."""
import numpy as np
import pytest
import torch

from algos.core.ensemble import DynamicsEnsemble, EnsembleMLP
from algos.core.scalars import Scalars
from algos.core.training import (BREMEN_STOPPING, MOPO_STOPPING, EarlyStopping, ModelTrainer, Patience,
                                 StoppingRule, hidden_l2_per_train_sample, member_rows)

OBS, ACT = 3, 2


def run_rule(rule: StoppingRule, losses: list[list[float]]) -> EarlyStopping:
    """Feed per-epoch losses [epoch][member] (only at validation epochs) until the rule ends."""
    state = EarlyStopping(rule, len(losses[0]))
    epoch = 0
    while not state.done(epoch):
        epoch += 1
        if rule.validates(epoch):
            state.update(epoch, losses[epoch - 1])
    state.epochs = epoch
    return state


def test_musbo_patience_3_stops_each_member_3_epochs_after_its_best():
    # member 0 improves in epochs 1-2, member 1 in epochs 1-4; then both are flat
    losses = [[1.0, 1.0], [0.5, 0.9], [0.6, 0.8], [0.6, 0.7], [0.6, 0.7], [0.6, 0.7], [0.6, 0.7], [0.6, 0.7]]
    state = run_rule(Patience(3), losses)
    assert state.stopped_at.tolist() == [5, 7] and state.epochs == 7
    assert state.best_epoch.tolist() == [2, 4]
    assert run_rule(Patience(3, max_epochs=6), losses).epochs == 6       # the cap ends it first


def test_bremen_validates_every_5_epochs_and_stops_20_after_the_best():
    """model/dynamics.py:200-214: validation when the 0-based epoch % 5 == 0 (1-based 1, 6, 11, ...);
    a model stops at a validation epoch once epoch - best_epoch >= 20."""
    assert [e for e in range(1, 17) if BREMEN_STOPPING.validates(e)] == [1, 6, 11, 16]
    flat = [[1.0]] * 300
    assert run_rule(BREMEN_STOPPING, flat).stopped_at.tolist() == [21]
    better_at_6 = [[1.0]] * 5 + [[0.5]] * 295
    assert run_rule(BREMEN_STOPPING, better_at_6).stopped_at.tolist() == [26]
    always_better = [[1.0 - 1e-3 * e] for e in range(300)]
    state = run_rule(BREMEN_STOPPING, always_better)
    assert state.epochs == 200 and state.stopped_at.tolist() == [0]  # the 200-epoch cap


def test_mopo_stops_after_6_epochs_without_a_1_percent_improvement_of_any_member():
    """bnn.py:309-331: an improvement is (best - loss) / best > 0.01 for some member; training
    breaks once epochs_since_update > 5, i.e. in the 6th epoch without one; no epoch cap."""
    # member 1 improves by 2 % per epoch up to epoch 4, then sits 0.5 % below its best (not counted)
    m1 = [0.98 ** e for e in range(4)] + [0.98 ** 3 * 0.995] * 40
    losses = [[5.0, v] for v in m1]
    state = run_rule(MOPO_STOPPING, losses)
    assert state.epochs == 4 + 6 and state.stopped_at.tolist() == [10, 10]
    assert MOPO_STOPPING.max_epochs is None
    long = [[0.97 ** e] for e in range(500)]                # 3 % per epoch: never stops
    state = EarlyStopping(MOPO_STOPPING, 1)
    for e in range(1, 500):
        state.update(e, long[e - 1])
    assert not state.done(499)


def test_bad_rule_is_rejected():
    with pytest.raises(ValueError, match="keep"):
        StoppingRule(patience=3, keep="first")
    with pytest.raises(ValueError, match=">= 1"):
        StoppingRule(patience=0)


def scripted_fit(rule: StoppingRule, script: list[list[float]], monkeypatch):
    """A real fit (lr > 0, the weights move every epoch) whose holdout losses are `script`;
    returns the model, the weights after each epoch (before the rule acts) and the result."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, members=2, hidden=[8])
    g = torch.Generator().manual_seed(0)
    data = {"obs": torch.randn(64, OBS, generator=g).numpy(), "act": torch.randn(64, ACT, generator=g).numpy()}
    data["next_obs"] = data["obs"] + 0.1
    seen = []

    def holdout_mse(x, y):
        seen.append(model.net.layers[0].weight.detach().clone())
        return torch.tensor(script[len(seen) - 1]) if len(seen) <= len(script) else torch.zeros(2)
    monkeypatch.setattr(model, "holdout_mse", holdout_mse)
    res = ModelTrainer(lr=1e-2, batch_size=16).fit(model, data, None, rule, g)
    return model, seen, res


def test_keep_last_keeps_the_weights_each_member_stopped_with(monkeypatch):
    """BREMEN keeps the last weights: member 0 stops at epoch 3 and keeps epoch 3's weights while
    member 1 trains on to the cap (epoch 5) and keeps epoch 5's."""
    script = [[1.0, 1.0], [2.0, 0.9], [2.0, 0.8], [2.0, 0.7], [2.0, 0.6]]
    model, seen, res = scripted_fit(Patience(2, max_epochs=5), script, monkeypatch)
    assert res["epochs"] == 5 and res["stopped_at"] == [3, 0]
    w = model.net.layers[0].weight.detach()
    torch.testing.assert_close(w[0], seen[2][0])
    torch.testing.assert_close(w[1], seen[4][1])
    assert not torch.equal(seen[2][0], seen[4][0])               # the member did move after it stopped


def test_keep_best_restores_each_members_best_epoch(monkeypatch):
    script = [[1.0, 1.0], [2.0, 0.9], [2.0, 0.8], [2.0, 0.7], [2.0, 0.6]]
    rule = StoppingRule(patience=2, max_epochs=5, keep="best", per_member=True)
    model, seen, res = scripted_fit(rule, script, monkeypatch)
    w = model.net.layers[0].weight.detach()
    torch.testing.assert_close(w[0], seen[0][0])                 # member 0's best: epoch 1
    torch.testing.assert_close(w[1], seen[4][1])


def test_bremen_l2_is_sum_of_hidden_kernels_over_n_train(monkeypatch):
    """(1 / N_train) sum ||W||^2 / 2 over the hidden kernels only (model/dynamics.py:25-31, 178, 191)."""
    assert hidden_l2_per_train_sample(3, 200) == [1 / 200, 1 / 200, 0.0]
    net = EnsembleMLP(1, 2, 1, [2, 2])
    with torch.no_grad():
        for layer, value in zip(net.layers, (1.0, 2.0, 3.0)):
            layer.weight.fill_(value)                             # kernels [2x2] of 1, [2x2] of 2, [2x1] of 3
    penalty = net.weight_decay_penalty(hidden_l2_per_train_sample(3, 10))
    assert penalty.item() == pytest.approx((4 * 1.0 + 4 * 4.0) / 2 / 10)  # the output kernel is not decayed
    # the trainer hands the penalty 1 / (rows of the training split)
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, members=2, hidden=[8, 8])
    seen = []
    original = model.net.weight_decay_penalty
    monkeypatch.setattr(model.net, "weight_decay_penalty", lambda d: seen.append(list(d)) or original(d))
    data = {k: np.random.default_rng(0).normal(size=(85, d)).astype(np.float32)
            for k, d in (("obs", OBS), ("act", ACT), ("next_obs", OBS))}
    ModelTrainer(lr=1e-3, batch_size=64, weight_decay="per_train_sample").fit(model, data, None,
                                                                             Patience(3, max_epochs=1))
    assert seen[0] == [1 / 85, 1 / 85, 0.0]
    with pytest.raises(ValueError, match="per_train_sample"):
        ModelTrainer(lr=1e-3, batch_size=64, weight_decay="per_sample")


def test_bootstrap_rows_differ_per_member_and_are_reproducible():
    """MOPO's bnn.py:405: randint(n, size=[members, n]), one resample per member, drawn once."""
    a = member_rows(7, 200, True, torch.Generator().manual_seed(3))
    b = member_rows(7, 200, True, torch.Generator().manual_seed(3))
    assert a.shape == (7, 200) and torch.equal(a, b)
    assert len({tuple(r.tolist()) for r in a}) == 7                # each member its own resample
    assert all(len(set(r.tolist())) < 200 for r in a)              # with replacement: repeats
    plain = member_rows(3, 50, False, torch.Generator().manual_seed(3))
    assert all(sorted(r.tolist()) == list(range(50)) for r in plain)   # no bootstrap: every row once


def test_trainer_records_holdout_mse_per_member_per_validation():
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, members=2, hidden=[8])
    rng = np.random.default_rng(0)
    data = {k: rng.normal(size=(60, d)).astype(np.float32) for k, d in (("obs", OBS), ("act", ACT), ("next_obs", OBS))}
    scalars = Scalars()
    rule = StoppingRule(patience=50, validate_every=2, max_epochs=5)
    res = ModelTrainer(lr=1e-3, batch_size=16).fit(model, data, data, rule, scalars=scalars, phase="labeler")
    rows = [(r["phase"], r["name"], r["step"]) for r in scalars.rows]
    assert [(n, s) for p, n, s in rows if n.startswith("holdout")] == [
        ("holdout_mse_m0", 1), ("holdout_mse_m1", 1), ("holdout_mse_m0", 3), ("holdout_mse_m1", 3),
        ("holdout_mse_m0", 5), ("holdout_mse_m1", 5)]
    assert [s for p, n, s in rows if n == "train_loss"] == [1, 2, 3, 4, 5]
    assert ("labeler", "epochs", 0) in rows and res["epochs"] == 5
    assert {p for p, n, s in rows} == {"labeler"}
