"""The five environments of the paper, their observation-index table and the model-side
reward and termination functions (appendix F). `envs.collector` gathers real transitions.

    ENV_NAMES                                   ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run")
    make_env(name, seed=None)                   a gymnasium.Env, float32 Box obs, actions in [-1, 1]
    model_reward(name, obs, act, next_obs)      numpy or torch, batched over leading dims
    model_termination(name, obs, act, next_obs)
    mopo_termination(name, obs, act, next_obs)  MOPO's rule (Ant: z in [0.2, 1.0], finite s')
    ENV_SPECS[name]                             obs_dim, act_dim, x_velocity_index, z_index, ... , source
"""
from envs.model_side import model_reward, model_termination, mopo_termination
from envs.specs import ENV_NAMES, ENV_SPECS, EnvSpec, get_spec


def __getattr__(name):
    """make_env and MAX_EPISODE_STEPS import gymnasium (and MuJoCo, dm_control) on first use only:
    the model side (imagined rollouts, bench/gpu_check.py) runs where those are not installed."""
    if name in ("make_env", "MAX_EPISODE_STEPS"):
        from envs import make
        return getattr(make, name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")

__all__ = ["ENV_NAMES", "ENV_SPECS", "EnvSpec", "MAX_EPISODE_STEPS", "get_spec", "make_env",
           "model_reward", "model_termination", "mopo_termination"]
