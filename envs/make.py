"""make_env: the five environments of the paper behind one gymnasium interface."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.wrappers import TransformObservation

from envs.quiet import import_dm_control_suite, quiet_model_compile
from envs.specs import ENV_SPECS, get_spec

MAX_EPISODE_STEPS = 1000  # real episodes last at most 1000 steps (spec, "Model-side rewards")

# Our own dm_control wrapper, registered so that it is built like the other four (TimeLimit,
# order enforcing, a gymnasium EnvSpec).
_CHEETAH_RUN_ID = ENV_SPECS["cheetah-run"].env_id
if _CHEETAH_RUN_ID not in gym.registry:
    gym.register(id=_CHEETAH_RUN_ID, entry_point="envs.cheetah_run:CheetahRunEnv",
                 max_episode_steps=MAX_EPISODE_STEPS)


def _as_float32(obs: np.ndarray) -> np.ndarray:
    return obs.astype(np.float32)


def make_env(name: str, seed: int | None = None, *, env_checker: bool = True) -> gym.Env:
    """The environment `name` (one of ENV_NAMES) as a gymnasium.Env: flat float32 Box
    observations, Box actions in [-1, 1], episodes of at most 1000 steps (TimeLimit).

    With `seed`, the environment's generator and its action space are seeded, so the first
    reset() - and every later unseeded one - is deterministic; reset(seed=s) works as usual.
    `env_checker=False` leaves out gymnasium's PassiveEnvChecker (the collector steps the
    unwrapped env anyway).
    """
    spec = get_spec(name)
    if spec.env_id == _CHEETAH_RUN_ID:
        import_dm_control_suite()  # first: its import installs a MuJoCo warning callback to keep
    with quiet_model_compile():
        env = gym.make(spec.env_id, max_episode_steps=MAX_EPISODE_STEPS,
                       disable_env_checker=not env_checker, **spec.gym_kwargs)
    if env.observation_space.dtype != np.float32:  # gymnasium's MuJoCo envs emit float64
        space = spaces.Box(-np.inf, np.inf, shape=env.observation_space.shape, dtype=np.float32)
        env = TransformObservation(env, _as_float32, space)
    if seed is not None:
        env.unwrapped.np_random, _ = seeding.np_random(seed)  # as reset(seed=seed) would seed it
        env.action_space.seed(seed)
    return env
