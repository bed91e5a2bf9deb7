"""algos.core.bc: uncertainty-weighted behaviour cloning (eq. 11), its early stopping and guards."""
import copy

import pytest
import torch

from algos.core.bc import bc_loss, holdout_split, weighted_bc
from algos.core.policy import GaussianPolicy

BC = dict(lr=1e-2, batch_size=64, holdout=0.15, patience=5, max_epochs=40)


def make_policy(obs_dim=3, act_dim=2, seed=0):
    torch.manual_seed(seed)
    return GaussianPolicy(obs_dim, act_dim, hidden=(32,), init_log_std=-0.7)


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
    weighted_bc(on_a, obs, act, torch.cat([torch.ones(n), torch.full((n,), 0.01)]), **BC,
                generator=torch.Generator().manual_seed(0))
    assert (on_a.mean_action(probe) - 0.5).abs().max() < 0.1  # follows the heavily weighted expert
    uniform = make_policy()
    weighted_bc(uniform, obs, act, torch.ones(2 * n), **BC, generator=torch.Generator().manual_seed(0))
    averaged = uniform.mean_action(probe).detach()
    assert averaged.mean(0).abs().max() < 0.05 and averaged.abs().max() < 0.3  # plain BC averages the two


def test_unit_weights_are_plain_behaviour_cloning():
    obs, act = two_experts(n=100)
    policy = make_policy()
    plain = 0.5 * (act - policy.mean_action(obs)).pow(2).sum(-1).mean()
    assert torch.allclose(bc_loss(policy, obs, act, torch.ones(len(obs))), plain)
    a, b = copy.deepcopy(policy), copy.deepcopy(policy)
    ra = weighted_bc(a, obs, act, torch.ones(len(obs)), **BC, generator=torch.Generator().manual_seed(1))
    rb = weighted_bc(b, obs, act, None, **BC, generator=torch.Generator().manual_seed(1))
    assert ra["val_losses"] == rb["val_losses"]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_sets_the_obs_normalizer_and_leaves_the_log_std_alone():
    obs, act = two_experts(n=100)
    policy = make_policy()
    weighted_bc(policy, obs, act, None, **{**BC, "max_epochs": 2}, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(policy.obs_mean, obs.mean(0))
    assert torch.allclose(policy.obs_std, obs.std(0))
    assert torch.equal(policy.log_std.detach(), torch.full((2,), -0.7))


def test_early_stopping_restores_the_best_weights():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(200, 3, generator=gen)
    act = 0.8 * torch.rand(200, 2, generator=gen) - 0.4   # pure noise: the validation loss soon rises
    policy = make_policy()
    result = weighted_bc(policy, obs, act, None, lr=3e-2, batch_size=16, holdout=0.15, patience=3,
                         max_epochs=100, generator=torch.Generator().manual_seed(5))
    assert result["stopped_early"]
    assert result["val_losses"][-1] > result["best_val_loss"]
    _, val_idx = holdout_split(len(obs), 0.15, torch.Generator().manual_seed(5))  # the same split
    with torch.no_grad():
        restored = bc_loss(policy, obs[val_idx], act[val_idx], torch.ones(len(val_idx)))
    assert float(restored) == pytest.approx(result["best_val_loss"], rel=1e-6)


def test_non_finite_loss_names_the_phase():
    obs, act = two_experts(n=50)
    act[3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="phase=bc"):
        weighted_bc(make_policy(), obs, act, None, **BC, generator=torch.Generator().manual_seed(0))
