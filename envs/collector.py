"""Collect real transitions: one deployment's batch (`collect`) or whole evaluation episodes
(`run_episodes`).

Both step the unwrapped environment in a plain Python loop and keep the time limit
themselves: gymnasium's wrappers (PassiveEnvChecker, OrderEnforcing, TimeLimit, the float32
cast) only add per-step overhead here, and bench/bench_collect.py measured this loop faster on
2 cores than gymnasium's SyncVectorEnv and AsyncVectorEnv (see its table). Episode k of a call
with seed s is reset with `reset_seed(s, k)`, so the same seed gives the identical batch.
"""
from typing import Callable

import numpy as np

from envs.make import MAX_EPISODE_STEPS, make_env
from envs.specs import get_spec

Policy = Callable[[np.ndarray], np.ndarray]  # obs [n, obs_dim] float32 -> actions [n, act_dim]


def reset_seed(seed: int, episode: int) -> int:
    """The reset seed of the `episode`-th episode (0, 1, ...) of a call made with `seed`."""
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def _action_rng(seed: int) -> np.random.Generator:
    """The generator of the uniform random actions (policy None), separate from the resets."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 2**32 - 1]))


def collect(env_name: str, n_transitions: int, policy: Policy | None, seed: int,
            max_episode_steps: int = MAX_EPISODE_STEPS, progress: bool = False) -> dict[str, np.ndarray]:
    """Exactly `n_transitions` transitions from consecutive episodes.

    policy None draws actions uniformly in [-1, 1]; a callable gets obs[None] (float32,
    [1, obs_dim]) and row 0 of its output is clipped to [-1, 1], stored and stepped.
    Returns obs, act, rew, next_obs (float32) and terminated, truncated, episode_start (bool),
    each with n_transitions rows. terminated/truncated are as the env reports them, with the
    TimeLimit rule (truncated once an episode reaches max_episode_steps); in addition, if the
    batch ends mid-episode its LAST transition is marked truncated=True (cut by the batch end,
    so that no bootstrapping code treats it as a continuing step). episode_start[i] is True
    where obs[i] is the first state of an episode (after a reset). max_episode_steps may
    exceed 1000 for the gym envs; Cheetah-Run always ends its episodes at 1000 steps.
    """
    spec = get_spec(env_name)
    n = int(n_transitions)
    if n < 1:
        raise ValueError(f"n_transitions must be >= 1, got {n_transitions}")
    env = make_env(env_name, env_checker=False).unwrapped
    obs = np.empty((n, spec.obs_dim), np.float32)
    next_obs = np.empty((n, spec.obs_dim), np.float32)
    rew = np.empty(n, np.float32)
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    episode_start = np.zeros(n, bool)
    if policy is None:  # pre-sampled: one vectorised draw instead of n small ones
        act = _action_rng(seed).uniform(-1.0, 1.0, size=(n, spec.act_dim)).astype(np.float32)
    else:
        act = np.empty((n, spec.act_dim), np.float32)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=f"collect {env_name}", unit="step", mininterval=1.0)

    episode, t_in_episode = 0, 0
    o, _ = env.reset(seed=reset_seed(seed, episode))
    for t in range(n):
        obs[t] = o
        episode_start[t] = t_in_episode == 0
        if policy is not None:
            np.clip(np.asarray(policy(obs[t:t + 1]))[0], -1.0, 1.0, out=act[t])
        o, r, term, trunc, _ = env.step(act[t])
        t_in_episode += 1
        next_obs[t] = o
        rew[t] = r
        terminated[t] = term
        truncated[t] = trunc or t_in_episode >= max_episode_steps
        if terminated[t] or truncated[t]:
            episode, t_in_episode = episode + 1, 0
            o, _ = env.reset(seed=reset_seed(seed, episode))
        if bar is not None and (t + 1) % 1000 == 0:
            bar.update(1000)
    if not (terminated[-1] or truncated[-1]):
        truncated[-1] = True  # the batch ended mid-episode
    if bar is not None:
        bar.update(n - bar.n)
        bar.close()
    env.close()
    return {"obs": obs, "act": act, "rew": rew, "next_obs": next_obs,
            "terminated": terminated, "truncated": truncated, "episode_start": episode_start}


def run_episodes(env_name: str, policy: Policy | None, n_episodes: int, seed: int,
                 max_episode_steps: int = MAX_EPISODE_STEPS) -> list[dict]:
    """`n_episodes` whole episodes (to termination or max_episode_steps), for evaluation and
    for replaying real trajectories in a learned model. Each episode is a dict with obs, act,
    rew, next_obs (float32 arrays of the episode's length), terminated (bool: ended by the
    env's termination rather than the time limit) and ret (float: the sum of real rewards).
    Actions are drawn and clipped as in `collect`."""
    spec = get_spec(env_name)
    env = make_env(env_name, env_checker=False).unwrapped
    rng = _action_rng(seed) if policy is None else None
    episodes = []
    for episode in range(int(n_episodes)):
        o, _ = env.reset(seed=reset_seed(seed, episode))
        obs, act, rew, next_obs = [], [], [], []
        terminated = False
        for _ in range(int(max_episode_steps)):
            obs.append(np.asarray(o, np.float32))
            if policy is None:
                a = rng.uniform(-1.0, 1.0, size=spec.act_dim).astype(np.float32)
            else:
                a = np.clip(np.asarray(policy(obs[-1][None]))[0], -1.0, 1.0).astype(np.float32)
            o, r, terminated, truncated, _ = env.step(a)
            act.append(a)
            rew.append(r)
            next_obs.append(np.asarray(o, np.float32))
            if terminated or truncated:
                break
        episodes.append({"obs": np.stack(obs), "act": np.stack(act),
                         "rew": np.asarray(rew, np.float32), "next_obs": np.stack(next_obs),
                         "terminated": bool(terminated), "ret": float(np.sum(rew, dtype=np.float64))})
    env.close()
    return episodes
