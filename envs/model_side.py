"""Model-side rewards and terminations (appendix F), used only inside imagined rollouts.

Both functions are batched over any leading dims and take numpy arrays or torch tensors
(same kind, dtype and device out as in; no gradient is needed through them).

Which state's velocity: the real envs pay the finite-difference velocity over the step,
(x_after - x_before) / dt, while the observation holds the instantaneous qvel[0]. We read
x_dot (and Ant's z) from next_obs, i.e. the state after the action: on random rollouts its
x_dot tracks the env's forward velocity much better on HalfCheetah (dt 0.05 s: corr 0.92 vs
0.65) and as well, within noise, on the other four (short steps: |difference in corr| < 0.03;
Cheetah-Run's reward, computed after the physics step, favours s' slightly on average).
tests/test_envs.py re-measures this.
"""
import sys

import numpy as np

from envs.specs import get_spec


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to find out
    return torch is not None and isinstance(x, torch.Tensor)


def _as_array(x):
    return x if _is_torch(x) else np.asarray(x)


def model_reward(name: str, obs, act, next_obs):
    """Appendix F reward r(s, a, s') with shape obs.shape[:-1]; `obs` is unused (see module doc)
    but kept in the signature so that callers need not know which state is read."""
    spec = get_spec(name)
    act, next_obs = _as_array(act), _as_array(next_obs)
    x_dot = next_obs[..., spec.x_velocity_index]
    if spec.run_speed is not None:  # Cheetah-Run: max(0, min(x_dot / 10, 1))
        return (x_dot / spec.run_speed).clip(0.0, 1.0)
    reward = x_dot - spec.ctrl_cost * (act**2).sum(-1)
    if spec.height_cost:  # Ant: - 3.0 (z - 0.57)^2
        reward = reward - spec.height_cost * (next_obs[..., spec.z_index] - spec.height_target) ** 2
    return reward + spec.alive_bonus


def _inside(x, bounds):
    """lo < x < hi, strictly, as gymnasium's is_healthy tests it; NaN is outside."""
    lo, hi = bounds
    return (x > lo) & (x < hi)


def model_termination(name: str, obs, act, next_obs):
    """True where s' is unhealthy by the real env's rule (Hopper, Walker2d; gymnasium v5
    is_healthy); all False for HalfCheetah, Ant and Cheetah-Run. Shape obs.shape[:-1], bool."""
    spec = get_spec(name)
    next_obs = _as_array(next_obs)
    if not spec.terminates:
        if _is_torch(next_obs):
            import torch
            return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)
        return np.zeros(next_obs.shape[:-1], dtype=bool)
    healthy = _inside(next_obs[..., spec.z_index], spec.healthy_z_range)
    healthy = healthy & _inside(next_obs[..., spec.angle_index], spec.healthy_angle_range)
    if spec.healthy_state_range is not None:  # Hopper: every entry of obs[1:]
        healthy = healthy & _inside(next_obs[..., 1:], spec.healthy_state_range).all(-1)
    return ~healthy
