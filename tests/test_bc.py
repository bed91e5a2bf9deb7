"""algos.core.bc: uncertainty-weighted behaviour cloning (eq. 11) under MUSBO's early stopping and
BREMEN's fixed step count, the observation normaliser over every batch cloned so far (variance
floor), BREMEN's sampled-action loss for a state-dependent log-std, and the guards."""
import copy

import numpy as np
import pytest
import torch

from algos.core.bc import bc_loss, clone_policy, handoff_gap, normalizer_moments, random_action_loss, weighted_bc
from algos.core.policy import GaussianPolicy
from algos.core.scalars import Scalars
from algos.core.training import StoppingRule

RULE = StoppingRule(patience=5, max_epochs=40, keep="best")
BC = dict(lr=1e-2, batch_size=64)


def make_policy(obs_dim=3, act_dim=2, seed=0, **kw):
    torch.manual_seed(seed)
    return GaussianPolicy(obs_dim, act_dim, hidden=(32,), init_log_std=-0.7, **kw)


def data(obs, act):
    return {"obs": obs.numpy(), "act": act.numpy()}


def two_experts(n=300, seed=0):
    """The same states twice: expert A acts +0.5, expert B -0.5."""
    gen = torch.Generator().manual_seed(seed)
    obs = 3.0 + 2.0 * torch.randn(n, 3, generator=gen)
    obs = torch.cat([obs, obs])
    act = torch.cat([torch.full((n, 2), 0.5), torch.full((n, 2), -0.5)])
    return obs, act


def test_weights_select_which_actions_are_cloned():
    obs, act = two_experts()
    n = len(obs) // 2
    probe = obs[:50]
    on_a = make_policy()
    weighted_bc(on_a, data(obs, act), torch.cat([torch.ones(n), torch.full((n,), 0.01)]), **BC, stopping=RULE,
                generator=torch.Generator().manual_seed(0))
    assert (on_a.mean_action(probe) - 0.5).abs().max() < 0.1  # follows the heavily weighted expert
    uniform = make_policy()
    weighted_bc(uniform, data(obs, act), torch.ones(2 * n), **BC, stopping=RULE, generator=torch.Generator().manual_seed(0))
    averaged = uniform.mean_action(probe).detach()
    assert averaged.mean(0).abs().max() < 0.05 and averaged.abs().max() < 0.3  # plain BC averages the two


def test_unit_weights_are_plain_behaviour_cloning():
    obs, act = two_experts(n=100)
    policy = make_policy()
    plain = 0.5 * (act - policy.mean_action(obs)).pow(2).sum(-1).mean()
    assert torch.allclose(bc_loss(policy, obs, act, torch.ones(len(obs))), plain)
    a, b = copy.deepcopy(policy), copy.deepcopy(policy)
    ra = weighted_bc(a, data(obs, act), torch.ones(len(obs)), **BC, stopping=RULE, generator=torch.Generator().manual_seed(1))
    rb = weighted_bc(b, data(obs, act), None, **BC, stopping=RULE, generator=torch.Generator().manual_seed(1))
    assert ra["val_losses"] == rb["val_losses"]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_fixed_steps_no_holdout_drop_the_last_partial_batch():
    """BREMEN: exactly `steps` Adam steps of full batches (model/policies.py:143-168; a pass over
    100 rows with batch 64 is one step, the 36 left over are dropped, data_collection.py:84-86)."""
    obs, act = two_experts(n=50)                          # 100 rows
    policy = make_policy()
    scalars = Scalars()
    res = weighted_bc(policy, data(obs, act), None, **BC, steps=7, generator=torch.Generator().manual_seed(0),
                      scalars=scalars)
    assert res["steps"] == 7 and res["epochs"] == 7 and res["val_losses"] == [] and res["best_val_loss"] is None
    assert [r["step"] for r in scalars.rows if r["name"] == "bc_loss"] == list(range(1, 8))
    with pytest.raises(ValueError, match="exactly one"):
        weighted_bc(policy, data(obs, act), None, **BC, steps=7, stopping=RULE, generator=None)


def test_normalizer_accumulates_every_cloned_batch_with_a_variance_floor():
    """BREMEN's RunningStats (misc_utils.py:94-101): mean of all states cloned so far,
    std = sqrt(max(E[s^2] - mean^2, 1e-2) + 1e-6). BREMEN clones B(i) alone, but the moments are
    those of B(1..i): here the first batch's states set it although only the second is cloned."""
    first = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 1.0]], np.float32)
    second = np.array([[4.0, 5.0, 1.05], [6.0, 5.0, 1.05]], np.float32)
    all_obs = np.concatenate([first, second])
    mean, std = normalizer_moments(all_obs, 1e-2)
    np.testing.assert_allclose(mean, [3.0, 5.0, 1.025])
    # dim 0: var 5; dim 1: constant, floored at 1e-2; dim 2: var 6.25e-4 < 1e-2, floored
    np.testing.assert_allclose(std, np.sqrt(np.array([5.0, 1e-2, 1e-2]) + 1e-6), rtol=1e-6)
    policy = make_policy()
    cfg = {"bc": {"lr": 1e-2, "batch_size": 2, "steps": 1, "obs_normalizer": "all_batches", "obs_var_floor": 1e-2,
                  "patience": 3, "max_epochs": 5}}
    clone_policy(policy, {"obs": second, "act": np.zeros((2, 2), np.float32)}, cfg, torch.Generator().manual_seed(0),
                 all_obs=all_obs)
    np.testing.assert_allclose(policy.obs_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(policy.obs_std.numpy(), std, rtol=1e-6)
    # the old rule: the cloned states' own mean and std, no floor
    cfg["bc"]["obs_normalizer"] = "cloned_data"
    clone_policy(policy, {"obs": second, "act": np.zeros((2, 2), np.float32)}, cfg, torch.Generator().manual_seed(0),
                 all_obs=all_obs)
    np.testing.assert_allclose(policy.obs_mean.numpy(), second.mean(0), rtol=1e-6)
    assert policy.obs_std[0].item() == pytest.approx(np.std(second[:, 0], ddof=1), rel=1e-6)


def test_mean_only_with_a_global_log_std():
    obs, act = two_experts(n=100)
    policy = make_policy()
    weighted_bc(policy, data(obs, act), None, **BC, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy.log_std.detach(), torch.full((2,), -0.7))


def test_state_dependent_log_std_is_cloned_on_sampled_actions_and_shrinks():
    """BREMEN's _get_bc_loss (model/policies.py:136-141): the error of mean + std(s) * eps, which
    pushes std(s) towards its lower bound; every parameter is trained."""
    obs, act = two_experts(n=100)
    act = act[:100]                                           # one expert: a deterministic target
    policy = make_policy(log_std="state_dependent")
    before = policy.distribution(obs[:100])[1].mean().item()
    weighted_bc(policy, data(obs[:100], act), None, lr=1e-2, batch_size=64, steps=300,
                generator=torch.Generator().manual_seed(0))
    after = policy.distribution(obs[:100])[1].mean().item()
    assert after < before - 1.0


def test_early_stopping_restores_the_best_weights():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(200, 3, generator=gen)
    act = 0.8 * torch.rand(200, 2, generator=gen) - 0.4   # pure noise: the validation loss soon rises
    policy = make_policy()
    train, hold = data(obs[:170], act[:170]), data(obs[170:], act[170:])
    result = weighted_bc(policy, train, None, lr=3e-2, batch_size=16, holdout=hold,
                         stopping=StoppingRule(patience=3, max_epochs=100, keep="best"),
                         generator=torch.Generator().manual_seed(5))
    assert result["epochs"] < 100
    assert result["val_losses"][-1] > result["best_val_loss"]
    with torch.no_grad():
        restored = bc_loss(policy, obs[170:], act[170:], torch.ones(30))
    assert float(restored) == pytest.approx(result["best_val_loss"], rel=1e-6)


def test_non_finite_loss_names_the_phase():
    obs, act = two_experts(n=50)
    act[3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="phase=bc"):
        weighted_bc(make_policy(), data(obs, act), None, **BC, stopping=RULE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("log_std, min_log_std", [("global", -5.0), ("state_dependent", -1.0)])
def test_random_action_loss_is_the_loss_of_the_best_fit_to_uniform_actions(log_std, min_log_std):
    """The best predictor of U[-1, 1] actions drawn independently of s is 0 (and, with a
    state-dependent log-std, the smallest std): its bc_loss on many samples is the formula."""
    gen = torch.Generator().manual_seed(0)
    n, act_dim = 200_000, 3
    obs, act = torch.randn(n, 4, generator=gen), 2 * torch.rand(n, act_dim, generator=gen) - 1
    weights = torch.rand(n, generator=gen)
    policy = make_policy(obs_dim=4, act_dim=act_dim, log_std=log_std, min_log_std=min_log_std)
    with torch.no_grad():
        policy.mean_head.weight.zero_()
        policy.mean_head.bias.zero_()                               # mean 0 everywhere
        if policy.state_dependent:
            policy.log_std_weight.zero_()
            policy.log_std.fill_(-50.0)                             # tanh = -1: std = exp(min_log_std)
        loss = float(bc_loss(policy, obs, act, weights, torch.Generator().manual_seed(1)))
    min_std = np.exp(min_log_std) if policy.state_dependent else 0.0
    expected = random_action_loss(act_dim, float(weights.mean()), min_std)
    assert loss == pytest.approx(expected, rel=0.01)
    assert random_action_loss(act_dim, 1.0) == pytest.approx(act_dim / 6)


def test_cloning_random_actions_ends_at_the_recorded_reference_and_real_actions_below_it():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2000, 3, generator=gen)
    random_act = 2 * torch.rand(2000, 2, generator=gen) - 1
    learnable = torch.tanh(obs[:, :2] - 0.5 * obs[:, 2:])          # a function of s
    weights = torch.full((2000,), 0.5)
    losses = {}
    for name, act in (("random", random_act), ("learnable", learnable)):
        scalars = Scalars()
        weighted_bc(make_policy(), data(obs, act), weights, **BC, steps=400, scalars=scalars,
                    generator=torch.Generator().manual_seed(0))
        rows = [r for r in scalars.rows if r["phase"] == "bc"]
        reference = [r["value"] for r in rows if r["name"] == "random_action_loss"]
        assert reference == [pytest.approx(random_action_loss(2, 0.5))]   # once, from the train weights
        losses[name] = [r["value"] for r in rows if r["name"] == "bc_loss"][-1] / reference[0]
    assert losses["random"] > 0.95                  # nothing to learn: at the random-action level
    assert losses["learnable"] < 0.2


def test_handoff_gap_records_how_far_the_clone_starts_from_the_policy_that_collected():
    """handoff_gap: 1/2 mean ||pi_clone(s) - pi_prev(s)||^2 on the collected states, recorded once;
    cloning the collector's own actions closes most of the gap a fresh policy starts with."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2000, 3, generator=gen)
    collector = make_policy(seed=1)
    with torch.no_grad():
        collector.mean_head.weight.mul_(20.0)  # a collector far from a fresh policy's near-zero actions
        act = collector.mean_action(obs)
    assert handoff_gap(collector, collector, obs.numpy()) == 0.0
    fresh = make_policy(seed=2)
    expected = 0.5 * (fresh.mean_action(obs) - act).pow(2).sum(-1).mean().item()
    assert handoff_gap(collector, fresh, obs.numpy()) == pytest.approx(expected, rel=1e-5)
    scalars, clone = Scalars(), make_policy(seed=2)
    weighted_bc(clone, data(obs, act), None, **BC, steps=400, scalars=scalars, generator=torch.Generator().manual_seed(0),
                handoff=(collector, obs.numpy()))
    recorded = [r["value"] for r in scalars.rows if r["name"] == "handoff_gap"]
    assert recorded == [pytest.approx(handoff_gap(collector, clone, obs.numpy()))]
    assert recorded[0] < 0.2 * expected
