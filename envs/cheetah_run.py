"""dm_control's cheetah/run as a plain gymnasium.Env (no shimmy: it is ~2x slower).

Observation: position (qpos[1:], 8) then velocity (qvel, 9) as one float32 vector of 17.
Reward: dm_control's own, rewards.tolerance(physics.speed(), ...), where speed() is the torso
SUBTREE linear velocity - a slightly different quantity from velocity[0] = qvel[0] (rootx)
that the model-side reward of appendix F reads from the observation.
Episodes: 1000 control steps of 0.01 s (dm_control's 10 s time limit), reported as
truncated; the task never terminates.

step() makes the same MuJoCo calls as dm_control's control.Environment.step (set ctrl,
mj_step2 + mj_step1 as Physics.step, its invalid-state check, the same reward formula) but
skips its per-step Python (wrappers, the observation OrderedDict, rewards.tolerance on a
scalar, the TimeStep): several times faster and bit-identical (tests/test_envs.py steps
both side by side). reset() is dm_control's own.
"""
import gymnasium as gym
import mujoco
import numpy as np
from dm_control.rl.control import PhysicsError
from gymnasium import spaces

from envs.quiet import import_dm_control_suite, quiet_model_compile
from envs.specs import ENV_SPECS

_RUN_SPEED = 10.0  # dm_control suite/cheetah.py: running speed above which the reward is 1


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
        self._steps = 0
        self._step_limit = self._dm_env._step_limit  # time_limit / control_timestep = 1000
        sensor = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SENSOR, "torso_subtreelinvel")
        self._speed_adr = int(self.model.sensor_adr[sensor])  # physics.speed() reads sensordata here
        # step() repeats Physics.step's legacy path, which holds for an Euler model only
        assert self.physics.legacy_step and self.model.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER

    # The raw MuJoCo structures, named as in gymnasium's MujocoEnv (the benchmark uses them).
    @property
    def model(self) -> mujoco.MjModel:
        return self.physics.model.ptr

    @property
    def data(self) -> mujoco.MjData:
        return self.physics.data.ptr

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # dm_control draws the initial joint angles from task.random: seed it from our np_random,
        # so that reset(seed=s) is deterministic and later unseeded resets follow from it.
        self._dm_env.task.random.seed(int(self.np_random.integers(2**32)))
        self._dm_env.reset()
        self._needs_reset, self._steps = False, 0
        # the raw MuJoCo structures and live views into MjData for step(): each attribute access
        # would go through dm_control's wrappers or build a new array
        self._mj_model, self._mj_data = self.model, self.data
        data = self._mj_data
        self._ctrl, self._qpos, self._qvel, self._sensordata = data.ctrl, data.qpos, data.qvel, data.sensordata
        self._warnings = data.warning.number
        return self._observation(), {}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("CheetahRunEnv: call reset() before step() (the episode is over or not begun)")
        warnings_before = self._warnings.tobytes()
        np.copyto(self._ctrl, action)  # Cheetah.before_step: physics.set_control
        self._physics_step()
        # Physics.check_invalid_state: a warning counter went up (counters only grow within a step)
        if self._warnings.tobytes() != warnings_before:
            raise PhysicsError(f"cheetah-run: the physics state is invalid (MuJoCo warnings "
                               f"{self._warnings.tolist()}); the action was {np.asarray(action).tolist()}")
        self._steps += 1
        truncated = self._steps >= self._step_limit  # only the time limit ends a cheetah/run episode
        self._needs_reset = truncated
        return self._observation(), run_reward(float(self._sensordata[self._speed_adr])), False, truncated, {}

    def _physics_step(self) -> None:
        """Physics.step(): the legacy step of an Euler model; finish this step, then update the
        position- and velocity-dependent fields (the sensors) for the next state."""
        mujoco.mj_step2(self._mj_model, self._mj_data)
        mujoco.mj_step1(self._mj_model, self._mj_data)

    def _observation(self) -> np.ndarray:
        """Cheetah.get_observation flattened: position (qpos[1:]) then velocity (qvel), float32."""
        return np.concatenate((self._qpos[1:], self._qvel)).astype(np.float32)


def run_reward(speed: float) -> float:
    """cheetah.Cheetah.get_reward: rewards.tolerance(speed, bounds=(10, inf), margin=10,
    value_at_margin=0, sigmoid="linear"), written out for a scalar in the same arithmetic."""
    if speed >= _RUN_SPEED:
        return 1.0
    d = (_RUN_SPEED - speed) / _RUN_SPEED
    return 1.0 - d if abs(d) < 1 else 0.0
