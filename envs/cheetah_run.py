"""dm_control's cheetah/run as a plain gymnasium.Env (no shimmy: it is ~2x slower).

Observation: position (qpos[1:], 8) then velocity (qvel, 9) as one float32 vector of 17.
Reward: dm_control's own, rewards.tolerance(physics.speed(), ...), where speed() is the torso
SUBTREE linear velocity - a slightly different quantity from velocity[0] = qvel[0] (rootx)
that the model-side reward of appendix F reads from the observation.
Episodes: 1000 control steps of 0.01 s (dm_control's 10 s time limit), reported as
truncated; the task never terminates.
"""
import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs.quiet import import_dm_control_suite, quiet_model_compile
from envs.specs import ENV_SPECS


class CheetahRunEnv(gym.Env):
    """cheetah/run of the dm_control suite; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self):
        suite = import_dm_control_suite()
        with quiet_model_compile():
            # The task's RandomState is re-seeded at every reset from self.np_random.
            self._dm_env = suite.load(*ENV_SPECS["cheetah-run"].dm_control_task, task_kwargs={"random": 0})
        self.physics = self._dm_env.physics
        self.frame_skip = 1  # control timestep 0.01 s = physics timestep 0.01 s
        self.dt = self._dm_env.control_timestep()
        spec = self._dm_env.action_spec()
        self.action_space = spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32),
                                       dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(ENV_SPECS["cheetah-run"].obs_dim,),
                                            dtype=np.float32)
        self._needs_reset = True

    # The raw MuJoCo structures, named as in gymnasium's MujocoEnv (the benchmark uses them).
    @property
    def model(self) -> mujoco.MjModel:
        return self.physics.model.ptr

    @property
    def data(self) -> mujoco.MjData:
        return self.physics.data.ptr

    @staticmethod
    def _flat(observation) -> np.ndarray:
        return np.concatenate((observation["position"], observation["velocity"])).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # dm_control draws the initial joint angles from task.random: seed it from our np_random,
        # so that reset(seed=s) is deterministic and later unseeded resets follow from it.
        self._dm_env.task.random.seed(int(self.np_random.integers(2**32)))
        time_step = self._dm_env.reset()
        self._needs_reset = False
        return self._flat(time_step.observation), {}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("CheetahRunEnv: call reset() before step() (the episode is over or not begun)")
        time_step = self._dm_env.step(action)
        truncated = time_step.last()  # only the time limit ends a cheetah/run episode
        self._needs_reset = truncated
        return self._flat(time_step.observation), float(time_step.reward), False, truncated, {}
