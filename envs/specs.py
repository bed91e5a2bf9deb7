"""The observation-index table: one frozen record per environment, each fact with its source.

Every number here is pinned by tests/test_envs.py against the installed simulators
(gymnasium 1.4.0 v5 envs, dm_control 1.0.50) or against appendix F of the paper
(spec/MUSBO.md, "Model-side rewards"); the `source` mapping says which, per field.
"""
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

INF = float("inf")

_GYM = "gymnasium 1.4.0, gymnasium/envs/mujoco/"
_APPENDIX_F = "paper appendix F (spec/MUSBO.md, Model-side rewards)"
_DMC = "dm_control 1.0.50, dm_control/suite/cheetah.py"


@dataclass(frozen=True)
class EnvSpec:
    """Layout and model-side reward/termination of one environment.

    The model-side reward (appendix F) is
        run_speed is None:  r = x_dot - ctrl_cost ||a||^2 - height_cost (z - height_target)^2 + alive_bonus
        run_speed set:      r = max(0, min(x_dot / run_speed, 1))        (Cheetah-Run)
    with x_dot = next_obs[x_velocity_index] and z = next_obs[z_index] (see `model_reward` for why s').
    """
    name: str
    env_id: str                    # gymnasium id (make_env builds it through gymnasium.make)
    dm_control_task: tuple[str, str] | None  # (domain, task) of the dm_control suite, else None
    obs_dim: int
    act_dim: int
    x_velocity_index: int          # obs index of the torso's forward velocity x_dot
    z_index: int                   # obs index of the torso height z (HalfCheetah, Cheetah-Run: rootz slide)
    ctrl_cost: float               # action-cost coefficient of the MODEL reward (appendix F)
    alive_bonus: float             # constant added by the model reward (appendix F)
    terminates: bool               # model_termination active in imagined rollouts (appendix F)
    env_ctrl_cost: float           # the real env's own action-cost coefficient (differs for Ant)
    env_terminates: bool           # whether the REAL env can end an episode by termination
    frame_skip: int                # physics steps (mj_step) per env step
    height_cost: float = 0.0       # Ant: 3.0 (z - 0.57)^2
    height_target: float = 0.0
    run_speed: float | None = None  # Cheetah-Run: speed at which the reward saturates at 1
    # Healthy-state rules of the real env, applied to next_obs (None: rule absent).
    healthy_z_range: tuple[float, float] | None = None       # on obs[z_index]
    healthy_angle_range: tuple[float, float] | None = None   # on obs[angle_index]
    angle_index: int | None = None
    healthy_state_range: tuple[float, float] | None = None   # on every obs[1:] entry (Hopper)
    # The real env's rule where the model side has none (Ant): healthy while every obs entry is
    # finite and obs[z_index] lies in this range, bounds included; MOPO's termination (model_side).
    env_healthy_z_range: tuple[float, float] | None = None
    gym_kwargs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    source: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


ENV_SPECS: Mapping[str, EnvSpec] = MappingProxyType({
    "walker2d": EnvSpec(
        name="walker2d", env_id="Walker2d-v5", dm_control_task=None,
        obs_dim=17, act_dim=6,
        x_velocity_index=8, z_index=0, ctrl_cost=1e-3, alive_bonus=1.0, terminates=True,
        env_ctrl_cost=1e-3, env_terminates=True, frame_skip=4,
        healthy_z_range=(0.8, 2.0), healthy_angle_range=(-1.0, 1.0), angle_index=1,
        source=_frozen({
            "layout": _GYM + "walker2d_v5.py: obs = qpos[1:] (8) then clip(qvel, -10, 10) (9); "
                      "x_dot = qvel[0] = obs[8], z = qpos[1] = obs[0], angle = qpos[2] = obs[1]",
            "reward": _APPENDIX_F + ": x_dot - 0.001 ||a||^2 + 1",
            "env_ctrl_cost": _GYM + "walker2d_v5.py: ctrl_cost_weight=1e-3",
            "termination": _GYM + "walker2d_v5.py is_healthy: 0.8 < z < 2.0 and -1 < angle < 1 "
                           "(strict), terminate_when_unhealthy=True",
            "frame_skip": _GYM + "walker2d_v5.py: frame_skip=4 (dt 0.008 s)",
        })),
    "hopper": EnvSpec(
        name="hopper", env_id="Hopper-v5", dm_control_task=None,
        obs_dim=11, act_dim=3,
        x_velocity_index=5, z_index=0, ctrl_cost=1e-3, alive_bonus=1.0, terminates=True,
        env_ctrl_cost=1e-3, env_terminates=True, frame_skip=4,
        healthy_z_range=(0.7, INF), healthy_angle_range=(-0.2, 0.2), angle_index=1,
        healthy_state_range=(-100.0, 100.0),
        source=_frozen({
            "layout": _GYM + "hopper_v5.py: obs = qpos[1:] (5) then clip(qvel, -10, 10) (6); "
                      "x_dot = qvel[0] = obs[5], z = qpos[1] = obs[0], angle = qpos[2] = obs[1]",
            "reward": _APPENDIX_F + ": x_dot - 0.001 ||a||^2 + 1",
            "env_ctrl_cost": _GYM + "hopper_v5.py: ctrl_cost_weight=1e-3",
            "termination": _GYM + "hopper_v5.py is_healthy: -100 < state_vector()[2:] < 100, "
                           "0.7 < z < inf, -0.2 < angle < 0.2 (strict); state_vector()[2:] is "
                           "obs[1:] except that obs clips velocities to +-10",
            "frame_skip": _GYM + "hopper_v5.py: frame_skip=4 (dt 0.008 s)",
        })),
    "halfcheetah": EnvSpec(
        name="halfcheetah", env_id="HalfCheetah-v5", dm_control_task=None,
        obs_dim=17, act_dim=6,
        x_velocity_index=8, z_index=0, ctrl_cost=0.1, alive_bonus=0.0, terminates=False,
        env_ctrl_cost=0.1, env_terminates=False, frame_skip=5,
        source=_frozen({
            "layout": _GYM + "half_cheetah_v5.py: obs = qpos[1:] (8) then qvel (9); "
                      "x_dot = qvel[0] = obs[8], obs[0] = rootz (slide joint)",
            "reward": _APPENDIX_F + ": x_dot - 0.1 ||a||^2",
            "env_ctrl_cost": _GYM + "half_cheetah_v5.py: ctrl_cost_weight=0.1",
            "termination": _APPENDIX_F + ": off (the real env never terminates either)",
            "frame_skip": _GYM + "half_cheetah_v5.py: frame_skip=5 (dt 0.05 s)",
        })),
    "ant": EnvSpec(
        name="ant", env_id="Ant-v5", dm_control_task=None,
        obs_dim=27, act_dim=8,
        x_velocity_index=13, z_index=0, ctrl_cost=0.1, alive_bonus=1.0, terminates=False,
        env_ctrl_cost=0.5, env_terminates=True, frame_skip=5,
        height_cost=3.0, height_target=0.57, env_healthy_z_range=(0.2, 1.0),
        gym_kwargs=_frozen({"include_cfrc_ext_in_observation": False}),
        source=_frozen({
            "layout": _GYM + "ant_v5.py with include_cfrc_ext_in_observation=False: obs = "
                      "qpos[2:] (13) then qvel (14); x_dot = qvel[0] = obs[13], z = qpos[2] = obs[0]",
            "reward": _APPENDIX_F + ": x_dot - 0.1 ||a||^2 - 3.0 (z - 0.57)^2 + 1",
            "env_ctrl_cost": _GYM + "ant_v5.py: ctrl_cost_weight=0.5 (NOT appendix F's 0.1), plus "
                             "contact_cost_weight=5e-4 on cfrc_ext",
            "termination": _APPENDIX_F + ": off in imagined rollouts (MUSBO; BREMEN's envs/gym/ant.py:69-71 "
                           "is_done is False); the real Ant-v5 terminates when the state is not finite or z "
                           "leaves [0.2, 1.0] (ant_v5.py is_healthy), as MOPO's mopo/static/ant.py:9-14 does",
            "frame_skip": _GYM + "ant_v5.py: frame_skip=5 (dt 0.05 s)",
        })),
    "cheetah-run": EnvSpec(
        name="cheetah-run", env_id="MUSBO/CheetahRun-v0", dm_control_task=("cheetah", "run"),
        obs_dim=17, act_dim=6,
        x_velocity_index=8, z_index=0, ctrl_cost=0.0, alive_bonus=0.0, terminates=False,
        env_ctrl_cost=0.0, env_terminates=False, frame_skip=1, run_speed=10.0,
        source=_frozen({
            "layout": _DMC + " get_observation: position = qpos[1:] (8) then velocity = qvel (9); "
                      "x_dot = qvel[0] (rootx) = obs[8], obs[0] = rootz",
            "reward": _APPENDIX_F + ": max(0, min(x_dot / 10, 1)); the real reward is "
                      "rewards.tolerance(physics.speed(), bounds=(10, inf), margin=10, linear) "
                      "with speed() the torso SUBTREE linear velocity, not qvel[0]",
            "env_ctrl_cost": _DMC + ": no action cost",
            "termination": _DMC + ": never terminates; 1000 steps (time_limit 10 s, "
                           "control timestep 0.01 s), then truncated",
            "frame_skip": _DMC + ": control timestep = physics timestep = 0.01 s (n_sub_steps 1)",
            "env_id": "envs/cheetah_run.py, registered with gymnasium by envs/make.py",
        })),
})

ENV_NAMES: tuple[str, ...] = ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run")
assert tuple(ENV_SPECS) == ENV_NAMES


def get_spec(name: str) -> EnvSpec:
    """The spec of `name`; an unknown name raises ValueError listing the valid ones."""
    try:
        return ENV_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown environment {name!r}; valid names: {', '.join(ENV_NAMES)}") from None
