"""Standing still as a reference for the final returns (docs/paper_to_code.md, "Standing still as a
reference"): action 0 at every step scores about 0 on HalfCheetah and Cheetah-Run but about 1000
on Ant and about 170 on Hopper (the healthy reward pays for not falling), so a verdict there can
compare a policy that only stands still with baselines that move and fall.

An algorithm *scores as standing still* at an env and budget when the 95 % CI over seeds of its
final-deployment eval return contains the mean return of standing still over the eval start
states of the same seeds. No CI (one seed, runs missing): no call."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from algos.core.seeding import stream_seed
from analysis import summaries
from analysis.figures import env_label, label
from analysis.output import fmt_interval
from analysis.profile import env_run_config
from analysis.results import Study
from envs import get_spec
from envs.collector import run_episodes


@lru_cache(maxsize=None)
def still_policy_return(env: str, seed: int, episodes: int) -> float:
    """The mean eval return of action 0 at every step, over the start states of a run's
    random-policy eval (algos/run.py: seed stream "eval", deployment 0)."""
    act_dim = get_spec(env).act_dim
    still = run_episodes(env, lambda obs: np.zeros((1, act_dim), np.float32), episodes, seed=stream_seed(seed, "eval", 0))
    return float(np.mean([e["ret"] for e in still]))


def reference(env: str, seeds, episodes: int) -> float:
    """Standing still's return on `env`: the mean over `seeds` of `still_policy_return`."""
    return float(np.mean([still_policy_return(env, int(s), int(episodes)) for s in seeds]))


def notes(study: Study, returns: pd.DataFrame, scopes, algos) -> list[str]:
    """One note per algorithm of `algos` that scores as standing still at an (env, budget) of
    `scopes`. `returns`: eval-return CIs over seeds (columns name, env, budget, deployment, mean,
    low, high), of which the last deployment of each env is read."""
    out = []
    for env, budget in scopes:
        still = None  # run the env only where some algorithm has a CI to compare
        for algo in algos:
            ci, _ = summaries.ci_at(returns, name=algo, env=env, budget=budget, deployment=study.deployments(env))
            if not np.isfinite(ci.low):
                continue
            if still is None:
                still = reference(env, study.seeds, env_run_config(study.cfg, env)["eval_episodes"])
            if ci.low <= still <= ci.high:
                out.append(f"scores as standing still: {label(algo)} {env_label(env)} {budget}, final return "
                           f"{fmt_interval(ci)} contains the return of action 0 at every step ({still:.0f}); this "
                           f"verdict may compare standing still, not learning")
    return out
