"""What MUSBO and BREMEN share in their policy phase: the policy, the clamp of imagined states,
and TRPO on imagined rollouts (the ensemble's fit lives in training.py, behaviour cloning in
bc.py). Each step reads its sizes from the resolved run config; the algorithm files decide the
weights, the data, the member choice and which state the model reward reads."""
from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from algos.config import PREDICTION_BOXES
from algos.core import preempt
from algos.core.ensemble import DynamicsEnsemble
from algos.core.policy import GaussianPolicy
from algos.core.rollouts import gaussian_sampler, imagine
from algos.core.scalars import Scalars
from algos.core.trpo import make_baseline, policy_update
from envs.model_side import model_reward, velocity_state

# trpo.sample_noise: how imagined actions are sampled; the likelihood ratio and the KL always use
# the policy's own std
SAMPLE_NOISES = ("fixed", "policy")
# trpo.batch_assembly=bremen_padded: BREMEN's sampler runs at most 1000 lanes (vectorized_sampler.py:24-25)
BREMEN_MAX_LANES = 1000


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
    """The policy section of the run config: `log_std` state_dependent (BREMEN's head bounded to
    [min_log_std, max_log_std]) or global (init_log_std, floor min_log_std)."""
    p = cfg["policy"]
    return GaussianPolicy(obs_dim, act_dim, hidden=p["hidden"], log_std=p["log_std"], init_log_std=p["init_log_std"],
                          min_log_std=p["min_log_std"], max_log_std=p["max_log_std"]).to(device)


def trpo_sampler(policy: GaussianPolicy, trpo_cfg: dict) -> Callable:
    """The imagined rollouts' action sampler: mean + N(0, sample_std^2) (`trpo.sample_noise: fixed`,
    BREMEN's --gaussian 0.1 --const_sampling, matsuolab/BREMEN model/policies.py:106-108 and
    README.md:62-70) or mean + N(0, std(s)^2) with the policy's own std (`policy`)."""
    kind = trpo_cfg["sample_noise"]
    if kind not in SAMPLE_NOISES:
        raise ValueError(f"trpo.sample_noise must be one of {SAMPLE_NOISES}, got {kind!r}")
    return gaussian_sampler(policy, trpo_cfg["sample_std"] if kind == "fixed" else None)


def train_in_model(policy: GaussianPolicy, dynamics: DynamicsEnsemble, start_states: np.ndarray,
                   box: tuple[np.ndarray, np.ndarray] | None, cfg: dict, member_choice: str,
                   generator: torch.Generator, label_fn: Callable | None = None, *, scalars: Scalars | None = None,
                   reward_velocity_from: str = "next_obs") -> dict:
    """L TRPO iterations (Table 2) on imagined rollouts from the recorded start states.

    member_choice: "per_iteration" (one member of M-hat-theta per iteration, MUSBO's text),
    "per_step" (one member per step for all rollouts, BREMEN's code) or "per_rollout".
    label_fn(s, a) -> U-hat [N] weighs each imagined sample in the surrogate (eqs. 12-13);
    None gives plain TRPO. box: `prediction_box(...)`, the clamp of imagined states.
    reward_velocity_from: the state the model reward reads x-velocity from
    (envs/model_side.py: VELOCITY_FROM). scalars: records per iteration (phase "policy", step =
    iteration) kl, step_fraction, line_search_accepted, line_search_backtracks,
    surrogate_improvement, expected_improvement, policy_std (mean std of the policy that scored
    the batch), live_samples (real rows of the update), padding_share (its padded rows /
    transitions_per_iteration under trpo.batch_assembly=bremen_padded, else 0), mean_reward,
    mean_reward_x_horizon (mean reward per imagined step x rollout_length), explained_variance
    and, with labels, the eq. 12 distribution (eq12_*, with the shares within 0.01 of 0 and of 1)."""
    t = cfg["trpo"]
    device = policy.log_std.device
    baseline = make_baseline(t["baseline"], policy.obs_dim, t, normalize=policy.normalize).to(device)
    env_name = cfg["env"]
    velocity_state(env_name, reward_velocity_from)  # a bad switch fails here, before any work

    def reward_fn(s, a, s2):
        return model_reward(env_name, s, a, s2, velocity_from=reward_velocity_from)
    starts = torch.as_tensor(start_states, dtype=torch.float32, device=device)
    n_rollouts = max(1, t["transitions_per_iteration"] // t["rollout_length"])
    padded = t["batch_assembly"] == "bremen_padded"
    if padded:
        n_rollouts = min(n_rollouts, BREMEN_MAX_LANES)
    clip = None if box is None else tuple(torch.as_tensor(b, device=device) for b in box)
    run_steps = cfg["deployments"] * t["iterations"] * t["rollout_length"]  # what `auto` reads on the CPU
    gen_device = generator.device
    history, first = [], 0
    loop = preempt.loop("trpo", "iteration", generator)  # a stop saves the iteration (algos/core/preempt.py)
    if loop.finished:
        return loop.result
    if loop.saved is not None:
        first, history = loop.saved["iteration"], loop.saved["history"]
        preempt.load_module_state(baseline, loop.saved["baseline"])
    bar = tqdm(range(first, t["iterations"]), desc="trpo", disable=not sys.stderr.isatty(), leave=False)
    t0 = time.perf_counter()
    policy_sample = trpo_sampler(policy, t)
    for iteration in bar:
        loop.poll(iteration, lambda: {"iteration": iteration, "history": list(history),
                                      "baseline": preempt.module_state(baseline)})
        if member_choice == "per_iteration":  # drawn on the device: no host sync
            members = torch.randint(dynamics.members, (1,), generator=generator, device=gen_device).to(device)
            choice = "per_step"
        else:
            members, choice = None, member_choice
        rollout = imagine(dynamics, policy_sample, starts, n_rollouts, t["rollout_length"], env_name, generator,
                          member_choice=choice, members=members, label_fn=label_fn, clip_obs=clip,
                          restart=t["restart_terminated"], engine=t["rollout_engine"], run_steps=run_steps,
                          reward_fn=reward_fn,
                          batch_size=t["transitions_per_iteration"] if padded else None)
        weights = rollout["labels"] if label_fn is not None else None
        stats = policy_update(policy, baseline, rollout, weights, gamma=cfg["gamma"], lam=t["gae_lambda"],
                              normalize_advantages=t["normalize_advantages"], delta=t["delta"],
                              cg_iters=t["cg_iters"], cg_damping=t["cg_damping"],
                              line_search_steps=t["line_search_steps"], line_search_decay=t["line_search_decay"],
                              line_search=t["line_search"], bootstrap_cutoff=t["bootstrap_cutoff"],
                              fvp_subsample=t["fvp_subsample"], generator=generator,
                              batch_assembly=t["batch_assembly"], batch_size=t["transitions_per_iteration"])
        history.append(stats)
        if scalars is not None:
            scalars.add_many("policy", {
                "kl": stats["kl"], "step_fraction": stats["step_fraction"],
                "line_search_accepted": float(stats["accepted"]), "line_search_backtracks": stats["backtracks"],
                "surrogate_improvement": stats["surrogate_after"] - stats["surrogate_before"],
                "expected_improvement": stats["expected_improvement"], "policy_std": stats["policy_std"],
                "live_samples": stats["n_samples"], "padding_share": stats["padding_share"],
                "mean_reward": stats["mean_reward"],
                "mean_reward_x_horizon": stats["mean_reward"] * t["rollout_length"],
                "explained_variance": stats["explained_variance"]}, step=iteration)
            if rollout.get("labels") is not None:
                scalars.distribution("policy", "eq12", rollout["labels"].detach().cpu().numpy(), iteration,
                                     bounds=(0, 1))  # the shares at 0 and 1: analysis/mechanisms.py's rule
        bar.set_postfix(reward=f"{stats['mean_reward']:.3f}", kl=f"{stats['kl']:.4f}")
    summary = {"iterations": len(history), "seconds": time.perf_counter() - t0,
               "accepted": sum(bool(h["accepted"]) for h in history),
               "first_mean_reward": history[0]["mean_reward"] if history else None,
               "final_mean_reward": history[-1]["mean_reward"] if history else None}
    if history:
        print(f"  trpo: {summary['iterations']} iterations ({summary['accepted']} steps accepted), imagined reward "
              f"per step {summary['first_mean_reward']:.3f} -> {summary['final_mean_reward']:.3f}",
              file=sys.stderr, flush=True)
    return loop.done(summary)
