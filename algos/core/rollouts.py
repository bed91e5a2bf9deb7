"""Imagined rollouts: the policy acting in the learned dynamics ensemble, all rollouts of a
batch stepped together, with the model-side reward and termination of appendix F."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

import envs

MEMBER_CHOICES = ("per_step", "per_rollout", "per_transition")


def _draw(n_candidates: int, size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform indices into the candidate members, drawn on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(n_candidates, size, generator=generator, device=device)


@torch.no_grad()
def imagine(dynamics, policy_sample: Callable, start_obs: torch.Tensor, horizon: int, env_name: str,
            generator: torch.Generator | None, member_choice: str = "per_step",
            label_fn: Callable | None = None, clip_obs: tuple | None = None,
            members: Sequence[int] | torch.Tensor | None = None,
            reward_fn: Callable | None = None, termination_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """Roll `policy_sample` out in `dynamics` from start_obs [N, obs_dim] for `horizon` steps.

    - policy_sample(obs, generator) -> actions [N, act_dim], unclipped. The model and the reward
      see the action clipped to [-1, 1]; `act` stores the unclipped one (the likelihood ratios
      of TRPO need the sampled action).
    - member_choice: "per_step": one member drawn at every step for ALL rollouts (BREMEN's code,
      and MUSBO's "pick one member at random" read per step); "per_rollout": each rollout
      keeps the member drawn at its start; "per_transition": a member per rollout per step
      (MOPO's random elite per transition). `members` restricts the candidates (e.g. MOPO's
      elites; default: all members).
    - reward / termination: envs.model_reward / envs.model_termination(env_name, s, a_clipped, s')
      unless reward_fn / termination_fn(s, a_clipped, s') are given.
    - A rollout that terminates stays frozen at its terminal state: later steps are masked
      (alive = 0, rew = 0, terminated = False, obs = next_obs = the terminal state).
    - clip_obs=(low, high): predicted states are clamped into this box (BREMEN clips its
      predictions, e.g. to the range of the data).
    - label_fn(obs, act_clipped) -> [K]: U-hat of each imagined transition (eq. 12), called once
      after the rollout on all T x N transitions (batched: far cheaper than T calls of N).

    Returns tensors on start_obs's device, [T, N, ...]: obs, act, rew, next_obs, terminated (bool),
    alive (float: 1 where the step is real, i.e. no termination at an earlier step), member
    (long: the member that predicted the step), and labels when label_fn is given.
    """
    if member_choice not in MEMBER_CHOICES:
        raise ValueError(f"member_choice must be one of {MEMBER_CHOICES}, got {member_choice!r}")
    reward_fn = reward_fn or (lambda s, a, s2: envs.model_reward(env_name, s, a, s2))
    termination_fn = termination_fn or (lambda s, a, s2: envs.model_termination(env_name, s, a, s2))
    device = start_obs.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    candidates = torch.as_tensor(range(dynamics.members) if members is None else members).long().to(gen_device)
    if clip_obs is not None:
        low, high = (torch.as_tensor(b, dtype=start_obs.dtype, device=device) for b in clip_obs)

    n = start_obs.shape[0]
    obs = start_obs
    alive = torch.ones(n, device=device)
    if member_choice == "per_rollout":
        rollout_member = candidates[_draw(len(candidates), (n,), generator)].to(device)
    keys = ["obs", "act", "rew", "next_obs", "terminated", "alive", "member"]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for _ in range(horizon):
        act = policy_sample(obs, generator)
        act_clipped = act.clamp(-1.0, 1.0)
        if member_choice == "per_step":
            m = int(candidates[_draw(len(candidates), (1,), generator)])
            next_obs = dynamics.predict(obs, act_clipped, member=m).next_obs[0]
            member = torch.full((n,), m, dtype=torch.long, device=device)
        else:
            member = rollout_member if member_choice == "per_rollout" else \
                candidates[_draw(len(candidates), (n,), generator)].to(device)
            next_obs = dynamics.predict(obs, act_clipped, member=member).next_obs
        if clip_obs is not None:
            next_obs = torch.maximum(torch.minimum(next_obs, high), low)
        live = alive.bool()
        next_obs = torch.where(live[:, None], next_obs, obs)  # terminated rollouts stay frozen
        rew = reward_fn(obs, act_clipped, next_obs) * alive
        terminated = termination_fn(obs, act_clipped, next_obs) & live

        out["obs"].append(obs)
        out["act"].append(act)
        out["rew"].append(rew)
        out["next_obs"].append(next_obs)
        out["terminated"].append(terminated)
        out["alive"].append(alive)
        out["member"].append(member)
        alive = alive * (~terminated).float()
        obs = next_obs
    rollout = {k: torch.stack(v) for k, v in out.items()}
    if label_fn is not None:  # the labels do not steer the rollout: one call on all T x N samples
        flat_obs = rollout["obs"].reshape(horizon * n, -1)
        flat_act = rollout["act"].clamp(-1.0, 1.0).reshape(horizon * n, -1)
        rollout["labels"] = label_fn(flat_obs, flat_act).reshape(horizon, n)
    return rollout
