"""Behaviour cloning, the initial policy of each deployment.

MUSBO eq. 11:  min_beta  1/|D| sum_{(s, a) in D}  1/2 * U-hat(s, a) * || a - pi_beta(s) ||^2
(pi_beta(s) the policy's tanh mean; weights of 1 give BREMEN's plain behaviour cloning).

Two schedules (see docs/paper_to_code.md):
- fixed steps (BREMEN: model/policies.py:143-168 of matsuolab/BREMEN runs `total_train_steps`
  = 300,000 Adam steps of batch 256 over shuffled passes of the data, the last partial batch of
  each pass dropped (data_collection.py:84-86), no holdout, no early stopping);
- epochs with a holdout and a `StoppingRule` (MUSBO: "same split and early stop" as eq. 8,
  patience 3; the best weights are restored).

The observation normaliser (`set_bc_normalizer`): BREMEN's behaviour policy keeps running sums
over every batch it has cloned (misc_utils.py:94-101, recursive.py:240-242): mean and
var = max(E[s^2] - mean^2, 1e-2), std = sqrt(var + 1e-6). Each batch is cloned once, in order, so
after deployment i these are the moments of B(1..i) = D_all: computed from D_all's states here
(no state to carry through a resume).

What is trained depends on the policy's log-std regime (algos/core/policy.py):
- global log-std: the mean network only, on eq. 11 (the log-std is TRPO's);
- state-dependent log-std head (BREMEN's policy): every parameter, on the error of a SAMPLED
  action mean(s) + std(s) * eps (BREMEN's _get_bc_loss, model/policies.py:136-141), which drives
  std(s) towards its lower bound. BREMEN's loss is the mean over the action entries; eq. 11's
  1/2 * sum over them is the same up to the constant act_dim / 2 (Adam is invariant to it).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from algos.config import BC_NORMALIZERS
from algos.core import preempt
from algos.core.policy import GaussianPolicy
from algos.core.training import EarlyStopping, StoppingRule



def bc_loss(policy: GaussianPolicy, obs, act, weights, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 11 on a batch: mean of 1/2 * w * ||a - pi(s)||^2, pi(s) the tanh mean (global log-std)
    or a sampled action mean(s) + std(s) * eps (state-dependent log-std, BREMEN)."""
    if policy.state_dependent:
        mean, log_std = policy.distribution(obs)
        gen_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=gen_device).to(mean.device)
        pred = mean + log_std.exp() * eps
    else:
        pred = policy.mean_action(obs)
    return (0.5 * weights * (act - pred).pow(2).sum(-1)).mean()


def random_action_loss(act_dim: int, mean_weight: float, min_std: float = 0.0) -> float:
    """The reference of eq. 11's loss: `bc_loss` of the best fit to actions drawn from U[-1, 1]^d
    independently of the state (on the same states, weights and normaliser), in expectation.
    No function of s predicts such actions better than their mean 0 (the normaliser does not
    matter), and each entry has variance 1/3, so
        loss = 1/2 * mean(w) * d * (1/3 + min_std^2),
    min_std = 0 for the tanh mean (global log-std); with a state-dependent log-std the loss scores
    a sampled action mean + std * eps, best at std = exp(min_log_std): its variance adds min_std^2.
    A final bc_loss near this says the cloned policy carries nothing over from the data."""
    return 0.5 * float(mean_weight) * int(act_dim) * (1.0 / 3.0 + float(min_std) ** 2)


@torch.no_grad()
def handoff_gap(previous: GaussianPolicy, clone: GaussianPolicy, states) -> float:
    """1/2 mean ||pi_clone(s) - pi_prev(s)||^2 over `states` (tanh means): how far the clone of
    eq. 11 starts TRPO from the policy whose mean collected those states (B(i): the last
    deployment's policy); 0 = the hand-off keeps the policy. Comparable to random_action_loss."""
    obs = torch.as_tensor(np.asarray(states), dtype=torch.float32, device=clone.obs_mean.device)
    return float(0.5 * (clone.mean_action(obs) - previous.mean_action(obs)).pow(2).sum(-1).mean())


def handoff_of(previous: GaussianPolicy, newest_states, deployment: int) -> tuple | None:
    """clone_policy's `handoff`: a copy of the policy that collected the newest batch, and that
    batch's states; None at deployment 1 (random actions collected B(1))."""
    return (copy.deepcopy(previous), newest_states) if deployment > 1 else None


def bc_parameters(policy: GaussianPolicy) -> list[torch.nn.Parameter]:
    """What behaviour cloning trains: every parameter with a state-dependent log-std head, else
    the mean network."""
    return policy.trpo_parameters() if policy.state_dependent else policy.mean_parameters()


def normalizer_moments(states, var_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """BREMEN's RunningStats over `states`: (mean, sqrt(max(var, var_floor) + 1e-6)), var the
    population variance."""
    x = np.asarray(states, dtype=np.float64)
    mean = x.mean(0)
    var = np.maximum(np.square(x).mean(0) - np.square(mean), var_floor)
    return mean, np.sqrt(var + 1e-6)


def set_bc_normalizer(policy: GaussianPolicy, kind: str, cloned_obs, all_obs, var_floor: float) -> None:
    """all_batches: BREMEN's running statistics of every state cloned so far (= D_all), with the
    variance floor; cloned_data: mean and std of the states being cloned (the project's old rule)."""
    if kind == "all_batches":
        mean, std = normalizer_moments(all_obs, var_floor)
    elif kind == "cloned_data":
        x = torch.as_tensor(np.asarray(cloned_obs), dtype=torch.float32)
        mean, std = x.mean(0), (x.std(0) if len(x) > 1 else torch.ones(x.shape[1]))
    else:
        raise ValueError(f"bc.obs_normalizer must be one of {BC_NORMALIZERS}, got {kind!r}")
    policy.set_obs_normalizer(mean, std)


def _check_finite(loss: float, what: str) -> None:
    if not np.isfinite(loss):
        raise FloatingPointError(f"non-finite behaviour cloning {what} loss {loss} (phase=bc): lower bc.lr "
                                 "or check the data")


def _tensors(data: dict, weights, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = torch.as_tensor(np.asarray(data["obs"]), dtype=torch.float32, device=device)
    act = torch.as_tensor(np.asarray(data["act"]), dtype=torch.float32, device=device)
    n = obs.shape[0]
    w = (torch.ones(n, device=device) if weights is None
         else torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=device).reshape(n))
    return obs, act, w


def weighted_bc(policy: GaussianPolicy, train: dict, weights, *, lr: float, batch_size: int,
                generator: torch.Generator | None, steps: int | None = None, holdout: dict | None = None,
                holdout_weights=None, stopping: StoppingRule | None = None, scalars=None,
                handoff: tuple | None = None) -> dict:
    """Fit the policy mean to train["obs"], train["act"] by eq. 11 with weights [n] (None: 1).

    steps: that many Adam steps (BREMEN), no validation. Otherwise epochs under `stopping`,
    validated on `holdout` (the training data when None or empty), best weights restored.
    Records `bc_loss` (phase "bc", step = pass over the data), with a holdout `holdout_loss`, and
    once `random_action_loss` (step 0), the loss of cloning uniform-random actions on the same data,
    and with handoff = (previous policy, states) its `handoff_gap` to the clone (step 0)."""
    if (steps is None) == (stopping is None):
        raise ValueError("weighted_bc needs exactly one of steps (fixed schedule) or stopping (early stopping)")
    device = policy.obs_mean.device
    obs, act, w = _tensors(train, weights, device)
    n = obs.shape[0]
    if n == 0:
        raise ValueError("behaviour cloning got no data: check the dataset passed to clone_policy")
    if holdout is not None and len(holdout["obs"]) > 0:
        v_obs, v_act, v_w = _tensors(holdout, holdout_weights, device)
    else:
        v_obs, v_act, v_w = obs, act, w
    params = bc_parameters(policy)
    optimizer = torch.optim.Adam(params, lr=lr)
    gen_device = generator.device if generator is not None else "cpu"
    full = min(batch_size, n)
    state = EarlyStopping(stopping, 1) if stopping is not None else None
    best = [p.detach().clone() for p in params]
    taken, epoch, train_loss, val_losses = 0, 0, float("nan"), []
    loop = preempt.loop("bc", "pass", generator)  # a stop saves the pass (algos/core/preempt.py)
    if loop.finished:
        return loop.result
    if loop.saved is not None:
        taken, epoch, train_loss, val_losses, best = _load_bc(loop.saved, optimizer, state, handoff)
    while True:
        loop.poll(epoch + 1, lambda: _bc_state(taken, epoch, train_loss, val_losses, best, optimizer, state, handoff))
        epoch += 1
        perm = torch.randperm(n, generator=generator, device=gen_device).to(device)
        total, count = torch.zeros((), device=device), 0
        # BREMEN's passes drop the last partial batch; the epoch schedule keeps it
        stop_at = n - full + 1 if steps is not None else n
        for start in range(0, stop_at, full):
            idx = perm[start:start + full]
            loss = bc_loss(policy, obs[idx], act[idx], w[idx], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            count += len(idx)
            taken += 1
            if steps is not None and taken >= steps:
                break
        train_loss = float(total) / max(count, 1)  # one sync per pass
        _check_finite(train_loss, "training")
        if scalars is not None:
            scalars.add("bc", "bc_loss", train_loss, epoch)
        if steps is not None:
            if taken >= steps:
                break
            continue
        with torch.no_grad():
            val = float(bc_loss(policy, v_obs, v_act, v_w, generator))
        _check_finite(val, "validation")
        val_losses.append(val)
        if scalars is not None:
            scalars.add("bc", "holdout_loss", val, epoch)
        improved, _ = state.update(epoch, [val])
        if improved[0]:
            best = [p.detach().clone() for p in params]
        if state.done(epoch):
            break
    if stopping is not None and stopping.keep == "best":
        with torch.no_grad():
            for p, b in zip(params, best):
                p.copy_(b)
    if scalars is not None:
        scalars.add("bc", "steps", taken, 0)
        min_std = float(np.exp(policy.min_log_std)) if policy.state_dependent else 0.0
        scalars.add("bc", "random_action_loss", random_action_loss(policy.act_dim, float(w.mean()), min_std), 0)
        if handoff is not None:  # inside the loop's result: a rerun that skips the finished loop keeps it
            scalars.add("bc", "handoff_gap", handoff_gap(handoff[0], policy, handoff[1]), 0)
    return loop.done(dict(epochs=epoch, steps=taken, final_train_loss=train_loss, val_losses=val_losses,
                          best_val_loss=None if state is None else float(state.best[0]),
                          best_epoch=None if state is None else int(state.best_epoch[0]), n_train=n,
                          n_val=0 if holdout is None else len(holdout["obs"])))


def _bc_state(taken: int, epoch: int, train_loss: float, val_losses: list, best: list, optimizer,
              state: EarlyStopping | None, handoff: tuple | None) -> dict:
    """What cloning needs to go on after `epoch` passes (the policy's weights are the algorithm's;
    the hand-off's previous policy is not: by the stop, the algorithm holds the clone in its place)."""
    return {"taken": taken, "epoch": epoch, "train_loss": train_loss, "val_losses": list(val_losses),
            "best": [b.clone() for b in best], "optimizer": optimizer.state_dict(),
            "stopping": None if state is None else state.state_dict(),
            "handoff_previous": None if handoff is None else handoff[0].state_dict()}


def _load_bc(saved: dict, optimizer, state: EarlyStopping | None, handoff: tuple | None) -> tuple:
    optimizer.load_state_dict(saved["optimizer"])
    if state is not None:
        state.load_state_dict(saved["stopping"])
    if handoff is not None and saved.get("handoff_previous") is not None:  # absent: saved before handoff_gap existed
        handoff[0].load_state_dict(saved["handoff_previous"])
    return saved["taken"], saved["epoch"], saved["train_loss"], saved["val_losses"], saved["best"]


def clone_policy(policy: GaussianPolicy, train: dict, cfg: dict, generator: torch.Generator, *,
                 all_obs, weighted: bool = False, holdout: dict | None = None, early_stopping: bool = False,
                 scalars=None, handoff: tuple | None = None) -> dict:
    """Behaviour cloning with the sizes of cfg["bc"]: the normaliser from `all_obs` (D_all's
    states, `bc.obs_normalizer`), then `bc.steps` steps (BREMEN) or, with `early_stopping`,
    epochs validated on `holdout` with patience `bc.patience` (MUSBO). weighted: eq. 11's
    weights are the labels U-hat of train / holdout; otherwise 1. handoff (`handoff_of`): the
    policy that collected the newest batch and that batch's states, recorded as `handoff_gap`."""
    b = cfg["bc"]
    set_bc_normalizer(policy, b["obs_normalizer"], train["obs"], all_obs, b["obs_var_floor"])
    weights = train["labels"] if weighted else None
    holdout_weights = holdout["labels"] if (weighted and holdout is not None) else None
    if early_stopping:
        rule = StoppingRule(patience=b["patience"], max_epochs=b["max_epochs"], keep="best")
        return weighted_bc(policy, train, weights, lr=b["lr"], batch_size=b["batch_size"], generator=generator,
                           holdout=holdout, holdout_weights=holdout_weights, stopping=rule, scalars=scalars,
                           handoff=handoff)
    return weighted_bc(policy, train, weights, lr=b["lr"], batch_size=b["batch_size"], generator=generator,
                       steps=b["steps"], scalars=scalars, handoff=handoff)
