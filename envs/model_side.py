"""Model-side rewards and terminations (appendix F), used only inside imagined rollouts.

Both functions are batched over any leading dims and take numpy arrays or torch tensors
(same kind, dtype and device out as in; no gradient is needed through them).

Which state's velocity (`velocity_from`, VELOCITY_FROM): the real envs pay the
finite-difference velocity over the step, (x_after - x_before) / dt, while the observation holds
the instantaneous qvel[0].
- "next_obs" (MUSBO's default): x_dot (and Ant's z) from s', the state after the action: on
  random rollouts its x_dot tracks the env's forward velocity much better on HalfCheetah
  (dt 0.05 s: corr 0.92 vs 0.65) and as well, within noise, on the other four (short steps:
  |difference in corr| < 0.03; Cheetah-Run's reward, computed after the physics step, favours s'
  slightly on average). tests/test_envs.py re-measures this.
- "obs": from s, the state before the action, on every env.
- "bremen_code" (BREMEN's default): as BREMEN's reward functions read it, s for HalfCheetah,
  Ant (z too) and Cheetah-Run (matsuolab/BREMEN envs/gym/half_cheetah.py:57, ant.py:61-62,
  cheetahrun.py:62), s' for Hopper and Walker2d (hopper.py:64, walker2d.py:64).
"""
import sys

import numpy as np

from envs.specs import get_spec


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to find out
    return torch is not None and isinstance(x, torch.Tensor)


def _as_array(x):
    return x if _is_torch(x) else np.asarray(x)


VELOCITY_FROM = ("next_obs", "obs", "bremen_code")
# The envs whose reward BREMEN's code reads from s (the others from s'); see the module doc.
BREMEN_READS_OBS = ("halfcheetah", "ant", "cheetah-run")


def velocity_state(name: str, velocity_from: str) -> str:
    """"obs" or "next_obs": the state the reward of env `name` reads under `velocity_from`."""
    if velocity_from not in VELOCITY_FROM:
        raise ValueError(f"velocity_from must be one of {VELOCITY_FROM}, got {velocity_from!r}")
    if velocity_from == "bremen_code":
        return "obs" if name in BREMEN_READS_OBS else "next_obs"
    return velocity_from


def model_reward(name: str, obs, act, next_obs, velocity_from: str = "next_obs"):
    """Appendix F reward r(s, a, s') with shape obs.shape[:-1]; x_dot (and Ant's z) are read from
    s or s' by `velocity_from` (see the module doc)."""
    spec = get_spec(name)
    act = _as_array(act)
    state = _as_array(obs if velocity_state(name, velocity_from) == "obs" else next_obs)
    x_dot = state[..., spec.x_velocity_index]
    if spec.run_speed is not None:  # Cheetah-Run: max(0, min(x_dot / 10, 1))
        return (x_dot / spec.run_speed).clip(0.0, 1.0)
    reward = x_dot - spec.ctrl_cost * (act**2).sum(-1)
    if spec.height_cost:  # Ant: - 3.0 (z - 0.57)^2
        reward = reward - spec.height_cost * (state[..., spec.z_index] - spec.height_target) ** 2
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


def mopo_termination(name: str, obs, act, next_obs):
    """MOPO's termination functions (mopo/static/<env>.py; the spec: "the env's termination
    function"). Ant: True where s' has a non-finite entry or z = s'[0] leaves [0.2, 1.0], bounds
    included (mopo/static/ant.py:9-14, = Ant-v5's is_healthy; `env_healthy_z_range`), although
    appendix F, MUSBO and BREMEN (envs/gym/ant.py:69-71) never end an imagined Ant rollout.
    Every other env: `model_termination` (the real env's own rule already)."""
    bounds = get_spec(name).env_healthy_z_range
    if bounds is None:
        return model_termination(name, obs, act, next_obs)
    next_obs = _as_array(next_obs)
    z = next_obs[..., get_spec(name).z_index]
    finite = (abs(next_obs) < float("inf")).all(-1)  # NaN and +-inf are not: numpy and torch alike
    return ~(finite & (z >= bounds[0]) & (z <= bounds[1]))
