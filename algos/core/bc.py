"""Uncertainty-weighted behaviour cloning, the initial policy of each deployment (MUSBO eq. 11):

    min_beta  1/|D| sum_{(s, a) in D}  1/2 * U-hat(s, a) * || a - pi_beta(s) ||^2

pi_beta(s) is the policy's tanh mean; weights of 1 give BREMEN's plain behaviour cloning.

Choices (see docs/paper_to_code.md):
- Only the mean network is trained; the log-std keeps its value (init_log_std for a fresh
  policy). BREMEN's BC loss also drove the std to its floor, a known quirk we do not reproduce:
  TRPO would start from a near-deterministic policy with no room to explore the model.
- The policy's observation normaliser is set from the states of D first (and then stays
  fixed through TRPO).
- Adam, an 85/15 split drawn from `generator`, early stopping on the weighted validation loss
  after `patience` epochs without improvement, the best weights restored.
"""
from __future__ import annotations

import math

import torch

from algos.core.policy import GaussianPolicy


def bc_loss(policy: GaussianPolicy, obs, act, weights) -> torch.Tensor:
    """Eq. 11 on a batch: mean of 1/2 * w * ||a - tanh mean(s)||^2."""
    sq_err = (act - policy.mean_action(obs)).pow(2).sum(-1)
    return (0.5 * weights * sq_err).mean()


def holdout_split(n: int, holdout: float, generator: torch.Generator | None):
    """(train indices, validation indices): a random `holdout` fraction for validation, the
    first draw from `generator` in weighted_bc (so a test can redraw it)."""
    dev = generator.device if generator is not None else "cpu"
    perm = torch.randperm(n, generator=generator, device=dev).cpu()
    n_val = int(round(holdout * n)) if n > 1 else 0
    return perm[n_val:], perm[:n_val]


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(f"non-finite behaviour cloning {what} loss {float(loss)} (phase=bc)")


def weighted_bc(policy: GaussianPolicy, obs, act, weights, *, lr: float, batch_size: int, holdout: float,
                patience: int, max_epochs: int, generator: torch.Generator | None, progress: bool = False) -> dict:
    """Fit the policy mean to (obs, act) by eq. 11. `weights` [n] are the labels U-hat(s, a)
    (None: all 1). Without a validation set (holdout 0 or a single sample) the training loss
    stands in for it."""
    device = policy.log_std.device
    obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
    act = torch.as_tensor(act, dtype=torch.float32, device=device)
    n = obs.shape[0]
    weights = (torch.ones(n, device=device) if weights is None
               else torch.as_tensor(weights, dtype=torch.float32, device=device).reshape(n))
    policy.set_obs_normalizer(obs.mean(0), obs.std(0) if n > 1 else torch.ones(obs.shape[1]))

    train_idx, val_idx = holdout_split(n, holdout, generator)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    params = policy.mean_parameters()
    optimizer = torch.optim.Adam(params, lr=lr)

    def validation_loss() -> float:
        idx = val_idx if len(val_idx) > 0 else train_idx
        with torch.no_grad():
            loss = bc_loss(policy, obs[idx], act[idx], weights[idx])
        _check_finite(loss, "validation")
        return float(loss)

    best_loss, best_epoch = validation_loss(), 0
    best_state = [p.detach().clone() for p in params]
    val_losses, train_loss, epochs_without_improvement, epoch = [], math.nan, 0, 0
    epochs = range(1, max_epochs + 1)
    if progress:
        from tqdm import tqdm
        epochs = tqdm(epochs, desc="weighted BC", leave=False)
    for epoch in epochs:
        dev = generator.device if generator is not None else "cpu"
        perm = train_idx[torch.randperm(len(train_idx), generator=generator, device=dev).to(device)]
        total = torch.zeros((), device=device)
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = bc_loss(policy, obs[idx], act[idx], weights[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        _check_finite(total, "training")  # once per epoch: no device sync per step
        train_loss = float(total) / max(len(perm), 1)
        val_losses.append(validation_loss())
        if val_losses[-1] < best_loss:
            best_loss, best_epoch, epochs_without_improvement = val_losses[-1], epoch, 0
            best_state = [p.detach().clone() for p in params]
        else:
            epochs_without_improvement += 1
            if epochs_without_improvement >= patience:
                break
    with torch.no_grad():
        for p, best in zip(params, best_state):
            p.copy_(best)
    return dict(epochs=epoch, best_epoch=best_epoch, best_val_loss=best_loss, val_losses=val_losses,
                final_train_loss=train_loss, stopped_early=epoch < max_epochs, n_train=len(train_idx),
                n_val=len(val_idx))
