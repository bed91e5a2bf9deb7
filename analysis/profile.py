"""The profile's config, as the analysis sees it: algos.config.load_profile (config/paper.yaml
deep-merged with config/PROFILE.yaml), and one env's `run:` settings."""
from __future__ import annotations

from algos.config import PER_ALGO, deep_merge, load_profile

__all__ = ["load_profile", "env_run_config"]


def env_run_config(cfg: dict, env: str) -> dict:
    """The `run:` settings of one env: run.defaults with run.envs[env] merged in (the order of
    algos.config.resolve_run_config, without a run's --set overrides and validation), without
    one algorithm's own values (run.envs[env].per_algo): the values Table 2 states, MUSBO's."""
    run = cfg["run"]
    section = {k: v for k, v in run.get("envs", {}).get(env, {}).items() if k != PER_ALGO}
    return deep_merge(run["defaults"], section)
