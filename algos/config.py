"""Run profiles: config/paper.yaml holds every number; mini.yaml and smoke.yaml override parts.

A run's configuration is resolved once, in this order, and saved with the run:
  run.defaults  <-  run.envs.<env>  <-  --set key=value overrides
The keys of `run.defaults` are the schema: anything not there is rejected, with the closest
known key named, before any work starts.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
PROFILES = ("paper", "mini", "smoke")
ALGOS = ("musbo", "bremen", "mopo")
BUDGETS = ("500k", "250k")

# The clamps of imagined states (algos/core/model_trpo.py: prediction_box).
PREDICTION_BOXES = ("abs_1e5", "data_range", "none")
# String-valued keys and the values they accept (the spec's switches).
CHOICES = {
    "start_states": ("episode_starts", "all_states"),
    "mopo.start_states": ("episode_starts", "all_states"),
    "trpo.baseline": ("linear", "mlp"),
    "trpo.clip_predictions": PREDICTION_BOXES,
    "model_eval_box": PREDICTION_BOXES,
    "musbo.member_choice": ("per_iteration", "per_step", "per_rollout"),
    "bremen.member_choice": ("per_iteration", "per_step", "per_rollout"),
    "musbo.label_reading": ("max_error", "max_label"),
    "musbo.label_space": ("raw", "normalized"),
    "musbo.exploration_noise": ("eq22", "one_minus_u", "none"),
    "mopo.penalty": ("max_std_norm", "frobenius"),
}
# Numeric keys that may be zero or negative; every other number must be > 0.
MAY_BE_NEGATIVE = {"policy.init_log_std", "policy.min_log_std", "mopo.logvar_min_init", "mopo.target_entropy"}
MAY_BE_ZERO = {"torch_threads", "dynamics.weight_decay", "bremen.dynamics_weight_decay", "mopo.weight_decay",
               "mopo.logvar_bound_penalty", "mopo.logvar_max_init", "mopo.improvement_threshold"}
FRACTIONS = {"dynamics.holdout", "labeler.holdout", "bc.holdout", "mopo.holdout_fraction",
             "trpo.fvp_subsample", "mopo.real_ratio", "trpo.gae_lambda", "gamma", "mopo.sac_tau",
             "trpo.line_search_decay"}


class ConfigError(ValueError):
    """A bad profile, key or value; the message names it and the fix."""


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: nested dicts merged, everything else (lists included) replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} is missing; restore it from git (git checkout -- {path})")
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def load_profile(profile: str) -> dict:
    """config/paper.yaml deep-merged with config/<profile>.yaml (paper: itself)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    config = _read_yaml(CONFIG_DIR / "paper.yaml")
    if profile != "paper":
        config = deep_merge(config, _read_yaml(CONFIG_DIR / f"{profile}.yaml"))
    return config


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _unknown_key(key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see config/paper.yaml (run.defaults) for the keys"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def _check_type(key: str, value, default):
    """Coerce ints to floats where the default is a float; reject other type changes."""
    if key in CHOICES and not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(CHOICES[key])}")
    if isinstance(default, bool) or isinstance(value, bool):
        if not (isinstance(default, bool) and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if key == "mopo.target_entropy" and (value == "minus_act_dim" or isinstance(value, (int, float))):
        return value
    if key == "device" and isinstance(value, str):
        return value
    if isinstance(default, list) and isinstance(value, list):
        return [_check_type(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)] if default else value
    if isinstance(default, (int, float)) and isinstance(value, (int, float)) and type(default) is type(value):
        return value
    if type(value) is not type(default):
        raise ConfigError(f"{key} must be {type(default).__name__} (like {default!r}), got {value!r}")
    return value


def _check_value(key: str, value) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(CHOICES[key])}")
    if key == "device" and not (value in ("auto", "cpu") or value.startswith("cuda")):
        raise ConfigError(f"device={value!r} is not valid; use auto, cpu, cuda or cuda:N")
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if key in FRACTIONS and not 0 < number <= 1:
            raise ConfigError(f"{key}={number!r} must lie in (0, 1]")
        if key not in MAY_BE_NEGATIVE and number < 0:
            raise ConfigError(f"{key}={number!r} must not be negative")
        if key not in MAY_BE_NEGATIVE | MAY_BE_ZERO and number == 0:
            raise ConfigError(f"{key}={number!r} must be positive")


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. trpo.delta=0.1")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; users mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def resolve_run_config(profile: str, algo: str, env: str, budget: str, seed: int,
                       overrides: list[str] = ()) -> dict:
    """The fully resolved configuration of one run (saved as config.yaml in its directory)."""
    from envs import ENV_NAMES  # the env table is the authority on names

    if algo not in ALGOS:
        raise ConfigError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    if env not in ENV_NAMES:
        raise ConfigError(f"unknown env {env!r}; choose one of {', '.join(ENV_NAMES)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    run = load_profile(profile)["run"]
    defaults = run["defaults"]
    schema = _flatten(defaults)
    env_section = run.get("envs", {}).get(env, {})
    for key in _flatten(env_section):
        if key not in schema:
            raise ConfigError(f"in run.envs.{env} of profile {profile}: " + str(_unknown_key(key, schema)))
    cfg = deep_merge(defaults, env_section)
    for text in overrides:
        key, value = parse_override(text)
        if key not in schema:
            raise _unknown_key(key, schema)
        _set(cfg, key, value)
    for key, value in _flatten(cfg).items():
        value = _check_type(key, value, schema[key])
        _check_value(key, value)
        _set(cfg, key, value)
    layers = len(cfg["mopo"]["hidden"]) + 1
    if len(cfg["mopo"]["weight_decay"]) != layers:
        raise ConfigError(f"mopo.weight_decay has {len(cfg['mopo']['weight_decay'])} entries but mopo.hidden "
                          f"{cfg['mopo']['hidden']} makes {layers} layers: give one decay per layer")
    batch_size = cfg["budget_samples"][budget] // cfg["deployments"]
    if batch_size < 1:
        raise ConfigError(f"budget_samples.{budget} is smaller than deployments={cfg['deployments']}")
    cfg.update(profile=profile, algo=algo, env=env, budget=budget, seed=seed, batch_size=batch_size)
    return cfg
