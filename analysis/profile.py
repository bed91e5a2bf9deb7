"""The profile's config, as the analysis sees it: config/paper.yaml deep-merged with
config/PROFILE.yaml (dicts merged, lists and scalars replaced)."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in: dicts recursively, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_profile(profile: str, config_dir: Path | str = CONFIG_DIR) -> dict:
    config_dir = Path(config_dir)
    path = config_dir / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise FileNotFoundError(f"no profile {profile!r}: {path} does not exist (profiles: {known})")
    cfg = yaml.safe_load((config_dir / "paper.yaml").read_text())
    if profile != "paper":
        cfg = deep_merge(cfg, yaml.safe_load(path.read_text()) or {})
    return cfg


def env_run_config(cfg: dict, env: str) -> dict:
    """The `run:` settings of one env: run.defaults with run.envs[env] merged in."""
    run = cfg["run"]
    return deep_merge(run["defaults"], run.get("envs", {}).get(env, {}))
