"""What MUSBO and BREMEN share between two deployments: the dynamics ensemble trained on
D_all, behaviour cloning, and TRPO on imagined rollouts. Each step reads its sizes from the
resolved run config; the algorithm files decide the weights, the data and the member choice."""
from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from algos.config import PREDICTION_BOXES
from algos.core.bc import weighted_bc
from algos.core.ensemble import DynamicsEnsemble
from algos.core.policy import GaussianPolicy
from algos.core.rollouts import imagine
from algos.core.trpo import make_baseline, policy_update


def make_ensemble(section: dict, obs_dim: int, act_dim: int, device, probabilistic: bool) -> DynamicsEnsemble:
    """M-hat-theta (deterministic, eq. 8) or the labeler P-hat-phi (probabilistic, eq. 10)."""
    return DynamicsEnsemble(obs_dim, act_dim, members=section["members"], hidden=section["hidden"],
                            probabilistic=probabilistic).to(device)


def fit_ensemble(model: DynamicsEnsemble, data: dict, section: dict, generator: torch.Generator,
                 weight_decay: float = 0.0) -> dict:
    """The 85/15 split and early stopping of appendix F; returns fit statistics."""
    return model.fit(data["obs"], data["act"], data["next_obs"], lr=section["lr"], batch_size=section["batch_size"],
                     holdout=section["holdout"], patience=section["patience"], max_epochs=section["max_epochs"],
                     weight_decay=weight_decay, generator=generator, progress=sys.stderr.isatty())


def prediction_box(kind: str, data: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The box every imagined state is clamped into (`trpo.clip_predictions`; the Fig. 6
    replay's `model_eval_box`):
    - "abs_1e5": |s_j| <= 1e5 (BREMEN's code: clip to the observation space's bounds, which
      are infinite for the MuJoCo envs, then to +-1e5; a guard against overflow only);
    - "data_range": the range of every state seen in D_all, next states included: a terminal
      state appears only as a next state, and a box of the start states alone would keep an
      imagined Hopper or Walker2d from ever falling (termination could never fire);
    - "none": no clamp."""
    if kind == "none":
        return None
    if kind == "abs_1e5":
        return np.full(data["obs"].shape[1], -1e5, np.float32), np.full(data["obs"].shape[1], 1e5, np.float32)
    if kind == "data_range":
        states = np.concatenate([data["obs"], data["next_obs"]])
        return states.min(0), states.max(0)
    raise ValueError(f"the prediction box must be one of {PREDICTION_BOXES}, got {kind!r}")


def make_policy(cfg: dict, obs_dim: int, act_dim: int, device) -> GaussianPolicy:
    p = cfg["policy"]
    return GaussianPolicy(obs_dim, act_dim, hidden=p["hidden"], init_log_std=p["init_log_std"],
                          min_log_std=p["min_log_std"]).to(device)


def clone_policy(policy: GaussianPolicy, data: dict, weights: np.ndarray, cfg: dict,
                 generator: torch.Generator) -> dict:
    """Eq. 11: weighted behaviour cloning (weights of 1 give plain BC)."""
    b = cfg["bc"]
    return weighted_bc(policy, data["obs"], data["act"], weights, lr=b["lr"], batch_size=b["batch_size"],
                       holdout=b["holdout"], patience=b["patience"], max_epochs=b["max_epochs"],
                       generator=generator, progress=sys.stderr.isatty())


def train_in_model(policy: GaussianPolicy, dynamics: DynamicsEnsemble, start_states: np.ndarray,
                   box: tuple[np.ndarray, np.ndarray] | None, cfg: dict, member_choice: str,
                   generator: torch.Generator, label_fn: Callable | None = None) -> dict:
    """L TRPO iterations (Table 2) on imagined rollouts from the recorded start states.

    member_choice: "per_iteration" (one member of M-hat-theta per iteration, MUSBO's text),
    "per_step" (one member per step for all rollouts, BREMEN's code) or "per_rollout".
    label_fn(s, a) -> U-hat [N] weighs each imagined sample in the surrogate (eqs. 12-13);
    None gives plain TRPO. box: `prediction_box(...)`, the clamp of imagined states."""
    t = cfg["trpo"]
    device = policy.log_std.device
    baseline = make_baseline(t["baseline"], policy.obs_dim, t).to(device)
    starts = torch.as_tensor(start_states, dtype=torch.float32, device=device)
    n_rollouts = max(1, t["transitions_per_iteration"] // t["rollout_length"])
    clip = None if box is None else tuple(torch.as_tensor(b, device=device) for b in box)
    gen_device = generator.device
    history = []
    bar = tqdm(range(t["iterations"]), desc="trpo", disable=not sys.stderr.isatty(), leave=False)
    t0 = time.perf_counter()
    for _ in bar:
        idx = torch.randint(len(starts), (n_rollouts,), generator=generator, device=gen_device).to(device)
        if member_choice == "per_iteration":
            members, choice = [int(torch.randint(dynamics.members, (1,), generator=generator, device=gen_device))], "per_step"
        else:
            members, choice = None, member_choice
        rollout = imagine(dynamics, policy.sample, starts[idx], t["rollout_length"], cfg["env"], generator,
                          member_choice=choice, members=members, label_fn=label_fn, clip_obs=clip)
        weights = rollout["labels"] if label_fn is not None else None
        stats = policy_update(policy, baseline, rollout, weights, gamma=cfg["gamma"], lam=t["gae_lambda"],
                              normalize_advantages=t["normalize_advantages"], delta=t["delta"],
                              cg_iters=t["cg_iters"], cg_damping=t["cg_damping"],
                              line_search_steps=t["line_search_steps"], line_search_decay=t["line_search_decay"],
                              fvp_subsample=t["fvp_subsample"], generator=generator)
        history.append(stats)
        bar.set_postfix(reward=f"{stats['mean_reward']:.3f}", kl=f"{stats['kl']:.4f}")
    summary = {"iterations": len(history), "seconds": time.perf_counter() - t0,
               "accepted": sum(bool(h["accepted"]) for h in history),
               "first_mean_reward": history[0]["mean_reward"] if history else None,
               "final_mean_reward": history[-1]["mean_reward"] if history else None}
    if history:
        print(f"  trpo: {summary['iterations']} iterations ({summary['accepted']} steps accepted), imagined reward "
              f"per step {summary['first_mean_reward']:.3f} -> {summary['final_mean_reward']:.3f}",
              file=sys.stderr, flush=True)
    return summary
