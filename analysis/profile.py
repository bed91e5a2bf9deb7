"""The profile's config, as the analysis sees it: algos.config.load_profile (config/paper.yaml
deep-merged with config/PROFILE.yaml), and one env's `run:` settings."""
from __future__ import annotations

from algos.config import deep_merge, load_profile

__all__ = ["load_profile", "env_run_config"]


def env_run_config(cfg: dict, env: str) -> dict:
    """The `run:` settings of one env: run.defaults with run.envs[env] merged in (the order of
    algos.config.resolve_run_config, without a run's --set overrides and validation)."""
    run = cfg["run"]
    return deep_merge(run["defaults"], run.get("envs", {}).get(env, {}))
