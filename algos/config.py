"""Run profiles: config/paper.yaml holds every number; any config/<name>.yaml overrides parts
(mini.yaml and smoke.yaml ship with the repo; a user's own profile is one more such file).

A run's configuration is resolved once, in this order, and saved with the run:
  run.defaults  <-  run.envs.<env>  <-  run.envs.<env>.per_algo.<algo>  <-  --set key=value overrides
(per_algo: one algorithm's own value on one env, e.g. BREMEN's TRPO delta on Cheetah-Run.)
The keys of `run.defaults` in config/paper.yaml are the schema: anything not there is rejected
(in a profile, a workflow config or an override), with the closest known key named, before any
work starts. Every leaf keeps the type of its paper value, every number is finite.
`config_hash` names a resolved config (the run directory's identity, algos/rundir.py).

    python -m algos.config write-run-config --out FILE --profile P --algo A --env E --budget B
        --seed N [--workflow-config merged.yaml] [--set KEY=VALUE ...]
writes the resolved run config that `python -m algos.run --run-config FILE` runs.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import math
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SHIPPED_PROFILES = ("paper", "mini", "smoke")  # any config/<name>.yaml is a profile too
ALGOS = ("musbo", "bremen", "mopo")
# What resolve_run_config adds to the tree of run.defaults: the run's identity and B = budget / I.
RUN_KEYS = ("profile", "algo", "env", "budget", "seed", "batch_size")
# run.envs.<env>.per_algo.<algo>: run.defaults keys of one algorithm on one env, merged last.
PER_ALGO = "per_algo"
BUDGETS = ("500k", "250k")

# The clamps of imagined states (algos/core/model_trpo.py: prediction_box).
PREDICTION_BOXES = ("abs_1e5", "data_range", "none")
# How the imagined-rollout loop runs (algos/core/rollouts.py: resolve_engine).
ROLLOUT_ENGINES = ("auto", "eager", "compiled", "cuda_graph")
# Choices that a module of algos/core checks too: defined here once, imported there.
LINE_SEARCHES = ("bremen", "kl_backtrack")        # algos/core/trpo.py: line_search
BATCH_ASSEMBLIES = ("bremen_padded", "full")      # algos/core/trpo.py: policy_update
HOLDOUT_SPLITS = ("batch_tail", "random")          # algos/core/dataset.py: DeploymentDataset.split
KEEP_WEIGHTS = ("last", "best")                    # algos/core/training.py: StoppingRule.keep
BC_NORMALIZERS = ("all_batches", "cloned_data")    # algos/core/bc.py: set_bc_normalizer
# String-valued keys and the values they accept (the spec's switches).
CHOICES = {
    "start_states": ("episode_starts", "all_states"),
    "mopo.start_states": ("episode_starts", "all_states"),
    "trpo.baseline": ("linear", "mlp"),
    "trpo.line_search": LINE_SEARCHES,
    "trpo.batch_assembly": BATCH_ASSEMBLIES,
    "trpo.sample_noise": ("fixed", "policy"),
    "policy.log_std": ("state_dependent", "global"),
    "bremen.model_reward_velocity_from": ("next_obs", "obs", "bremen_code"),
    "trpo.clip_predictions": PREDICTION_BOXES,
    "trpo.rollout_engine": ROLLOUT_ENGINES,
    "model_eval_box": PREDICTION_BOXES,
    "musbo.member_choice": ("per_iteration", "per_step", "per_rollout"),
    "bremen.member_choice": ("per_iteration", "per_step", "per_rollout"),
    "musbo.label_reading": ("max_error", "max_label"),
    "musbo.eq9_distance": ("raw", "std_sum", "std_mean"),
    "musbo.eq12_distance": ("raw", "std_sum", "std_mean"),
    "musbo.eq12_alpha": ("paper", "calibrated"),
    "musbo.eq22_reading": ("sigma", "variance"),
    "musbo.exploration_noise": ("eq22", "one_minus_u", "none"),
    "mopo.penalty": ("max_std_norm", "frobenius"),
    # model fits and BC
    "dynamics.holdout_split": HOLDOUT_SPLITS,
    "labeler.holdout_split": HOLDOUT_SPLITS,
    "bc.holdout_split": HOLDOUT_SPLITS,
    "dynamics.keep": KEEP_WEIGHTS,
    "labeler.keep": KEEP_WEIGHTS,
    "bc.obs_normalizer": BC_NORMALIZERS,
    "bremen.dynamics_l2": ("per_train_sample", "fixed"),
    "mopo.target_space": ("raw", "standardized"),
}
# Numeric keys that may be zero or negative; every other number must be > 0.
MAY_BE_NEGATIVE = {"policy.init_log_std", "policy.min_log_std", "policy.max_log_std", "mopo.logvar_min_init", "mopo.target_entropy"}
MAY_BE_ZERO = {"torch_threads", "dynamics.weight_decay", "bremen.dynamics_weight_decay", "mopo.weight_decay",
               "mopo.logvar_bound_penalty", "mopo.logvar_max_init", "mopo.improvement_threshold",
               "mopo.max_epochs", "bc.obs_var_floor"}
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


# ---- reading YAML: one loader for every config the project reads (profiles, workflow and run
# configs, --set values). Configs are small hand-written trees: anchors and aliases (the alias
# bomb) and duplicate keys (the last one silently winning) are refused, and 1e-5 is a float
# (YAML 1.1 reads a float without a dot as a string).
MAX_CONFIG_BYTES = 256 * 1024  # config/paper.yaml is 15 kB
MAX_ERROR_CHARS = 300
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors, aliases and a key given twice, naming the dotted key."""

    def __init__(self, stream):
        super().__init__(stream)
        self.keys = []  # the dotted key of the node being composed, for the error messages

    def refuse(self, keys: list, problem: str, mark):
        named = f"key {'.'.join(map(str, keys))!r} " if keys else "the document "
        raise yaml.composer.ComposerError(None, None, named + problem, mark)

    def compose_node(self, parent, index):
        named = isinstance(index, yaml.ScalarNode)  # a mapping's value: its key is index
        if named:
            self.keys.append(index.value)
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            self.refuse(self.keys, "holds an anchor or alias (& or *), which a config may not use; write the "
                        "value out", event.start_mark)
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node in (k for k, _ in node.value if isinstance(k, yaml.ScalarNode)):
                if key_node.value in seen:
                    self.refuse(self.keys + [key_node.value], f"is given twice (also at line {seen[key_node.value]}); "
                                "keep one", key_node.start_mark)
                seen[key_node.value] = key_node.start_mark.line + 1
        if named:
            self.keys.pop()
        return node


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789."))


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def parse_yaml(text: str, where: str):
    """`text` read with the project's loader; any problem is one ConfigError line naming `where`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} holds {len(text)} characters, more than a config's {MAX_CONFIG_BYTES}")
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(_one_line(f"{where} is not valid YAML{line}: {err.problem or err.context}")) from None
    except yaml.YAMLError as err:  # e.g. a control character
        raise ConfigError(_one_line(f"{where} is not valid YAML: {str(err).splitlines()[0]}")) from None


def read_config_file(path):
    """A config file (at most MAX_CONFIG_BYTES of UTF-8 YAML) read with parse_yaml. An OSError
    (missing, unreadable) is left to the caller, which knows how to make the file."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few kB of YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                          "a config is a YAML text file") from None
    return parse_yaml(text, str(path))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} is missing; restore it from git (git checkout -- {path})")
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def load_profile(profile: str) -> dict:
    """config/paper.yaml deep-merged with config/<profile>.yaml (paper: itself). Any file in
    config/ is a profile; its `profile:` key, when given, must equal its name."""
    if not isinstance(profile, str) or not PROFILE_NAME.match(profile) or profile == "schema":
        raise ConfigError(f"profile {profile!r} is not a profile name; use the name of a file config/<name>.yaml")
    config = _read_yaml(CONFIG_DIR / "paper.yaml")
    if profile != "paper":
        path = CONFIG_DIR / f"{profile}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown profile {profile!r}: {path} does not exist; create it (it is merged over "
                              f"config/paper.yaml) or use one of {', '.join(SHIPPED_PROFILES)}")
        own = _read_yaml(path)
        if own.get("profile", profile) != profile:
            raise ConfigError(f"{path} says profile: {own['profile']!r}; a profile file's profile key must be its "
                              f"file name ({profile!r})")
        config = deep_merge(config, own)
    config["profile"] = profile
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
        if not math.isfinite(number):  # nan, inf, and 1e400 (read as inf)
            raise ConfigError(f"{key}={number!r} must be a finite number")
        if key in FRACTIONS and not 0 < number <= 1:
            raise ConfigError(f"{key}={number!r} must lie in (0, 1]")
        if key not in MAY_BE_NEGATIVE and number < 0:
            raise ConfigError(f"{key}={number!r} must not be negative")
        if key not in MAY_BE_NEGATIVE | MAY_BE_ZERO and number == 0:
            raise ConfigError(f"{key}={number!r} must be positive")


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(_one_line(f"override {text!r} must look like key=value, e.g. trpo.delta=0.1"))
    key, raw = text.split("=", 1)
    value = parse_yaml(raw, _one_line(f"--set {key.strip()}"))
    if isinstance(value, str):  # nan, inf (YAML spells them .nan, .inf): users mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


@lru_cache(maxsize=1)
def _paper_schema_text() -> str:
    return json.dumps(_read_yaml(CONFIG_DIR / "paper.yaml")["run"]["defaults"])


def schema() -> dict:
    """The tree of run.defaults in config/paper.yaml: every key a run may have, and its type."""
    return json.loads(_paper_schema_text())


def _typed(tree, schema_tree: dict, prefix: str, flat_schema: dict, where: str) -> dict:
    """`tree` checked leaf by leaf against `schema_tree`: no unknown or missing key, a mapping
    exactly where the schema has one, every value of its schema type and valid."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}{prefix.rstrip('.') or 'run.defaults'} must be a mapping of "
                          f"{', '.join(schema_tree)}, got {tree!r}")
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if key not in schema_tree:
            raise ConfigError(where + str(_unknown_key(name, flat_schema)))
        default = schema_tree[key]
        if isinstance(default, dict):
            out[key] = _typed(value, default, name + ".", flat_schema, where)
            continue
        if isinstance(value, dict):
            raise ConfigError(f"{where}{name} must be {type(default).__name__} (like {default!r}), "
                              f"got the mapping {value!r}")
        try:
            value = _check_type(name, value, default)
            _check_value(name, value)
        except ConfigError as err:
            raise ConfigError(where + str(err)) from None
        out[key] = value
    missing = [f"{prefix}{key}" for key in schema_tree if key not in tree]
    if missing:
        raise ConfigError(f"{where}missing config key(s) {', '.join(missing)}; see config/paper.yaml (run.defaults)")
    return out


def _check_keys(tree: dict, flat_schema: dict, where: str) -> None:
    """A partial tree (a profile's or workflow's run.defaults, an env section): known keys only."""
    for key, value in _flatten(tree).items():
        if key in flat_schema:
            continue
        parent = next((p for p in flat_schema if key.startswith(p + ".")), None)
        if parent is not None:  # e.g. trpo.delta: {a: 1}
            default = flat_schema[parent]
            raise ConfigError(f"{where}{parent} must be {type(default).__name__} (like {default!r}), got a mapping")
        raise ConfigError(where + str(_unknown_key(key, flat_schema)))


def _finish(tree: dict, profile: str, algo: str, env: str, budget: str, seed: int, where: str = "") -> dict:
    """The validated tree with the run's identity and B = budget / I added."""
    cfg = _typed(tree, schema(), "", _flatten(schema()), where)
    layers = len(cfg["mopo"]["hidden"]) + 1
    if len(cfg["mopo"]["weight_decay"]) != layers:
        raise ConfigError(f"{where}mopo.weight_decay has {len(cfg['mopo']['weight_decay'])} entries but mopo.hidden "
                          f"{cfg['mopo']['hidden']} makes {layers} layers: give one decay per layer")
    t = cfg["trpo"]
    if t["batch_assembly"] == "bremen_padded" and (not t["restart_terminated"] or t["bootstrap_cutoff"]):
        raise ConfigError(f"{where}trpo.batch_assembly=bremen_padded needs trpo.restart_terminated=true and "
                          f"trpo.bootstrap_cutoff=false (BREMEN's sampler); set them or use trpo.batch_assembly=full")
    m = cfg["musbo"]
    if algo == "musbo" and m["eq12_alpha"] == "calibrated" and not m["uncertainty_weighting"] \
            and m["exploration_noise"] != "none":
        raise ConfigError(f"{where}musbo.eq12_alpha=calibrated sets alpha from TRPO's eq. 12 labels, which "
                          f"musbo.uncertainty_weighting=false never computes, yet eq. 22's noise needs it; use "
                          f"musbo.eq12_alpha=paper (or musbo.exploration_noise=none)")
    if budget not in cfg["budget_samples"]:
        raise ConfigError(f"{where}budget_samples has no entry {budget!r}; add budget_samples.{budget}")
    batch_size = cfg["budget_samples"][budget] // cfg["deployments"]
    if batch_size < 1:
        raise ConfigError(f"{where}budget_samples.{budget} is smaller than deployments={cfg['deployments']}")
    cfg.update(profile=profile, algo=algo, env=env, budget=budget, seed=seed, batch_size=batch_size)
    return cfg


def _check_identity(profile, algo, env, budget, seed) -> None:
    from envs import ENV_NAMES  # the env table is the authority on names

    if not isinstance(profile, str) or not PROFILE_NAME.match(profile):
        raise ConfigError(f"profile {profile!r} is not a profile name; use the name of a file config/<name>.yaml")
    if algo not in ALGOS:
        raise ConfigError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    if env not in ENV_NAMES:
        raise ConfigError(f"unknown env {env!r}; choose one of {', '.join(ENV_NAMES)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def resolve_run_config(profile: str, algo: str, env: str, budget: str, seed: int,
                       overrides=(), workflow_config: dict | None = None) -> dict:
    """The fully resolved configuration of one run (saved as config.yaml in its directory).
    `workflow_config`: the merged Snakemake config (the shape of config/paper.yaml); its `run`
    section is used instead of reading config/<profile>.yaml."""
    _check_identity(profile, algo, env, budget, seed)
    if workflow_config is None:
        source, run = f"profile {profile}", load_profile(profile).get("run")
    else:
        if not isinstance(workflow_config, dict):
            raise ConfigError(f"the workflow config must be a mapping, got {type(workflow_config).__name__}")
        if workflow_config.get("profile", profile) != profile:
            raise ConfigError(f"the workflow config is profile {workflow_config['profile']!r}, not {profile!r}")
        source, run = f"the workflow config (profile {profile})", workflow_config.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("defaults"), dict):
        raise ConfigError(f"{source} has no run.defaults mapping; see config/paper.yaml")
    flat_schema = _flatten(schema())
    envs = run.get("envs") or {}
    if not isinstance(envs, dict) or not isinstance(envs.get(env, {}), dict):
        raise ConfigError(f"run.envs.{env} of {source} must be a mapping of run.defaults keys")
    _check_keys(run["defaults"], flat_schema, f"in run.defaults of {source}: ")
    section = dict(envs.get(env, {}))
    per_algo = section.pop(PER_ALGO, None) or {}
    if not isinstance(per_algo, dict) or not all(a in ALGOS and isinstance(v, dict) for a, v in per_algo.items()):
        raise ConfigError(f"run.envs.{env}.{PER_ALGO} of {source} must map algorithms ({', '.join(ALGOS)}) to "
                          f"run.defaults keys, got {per_algo!r}")
    _check_keys(section, flat_schema, f"in run.envs.{env} of {source}: ")
    for name, own in per_algo.items():  # every algorithm's section, so a typo shows on any run of the env
        _check_keys(own, flat_schema, f"in run.envs.{env}.{PER_ALGO}.{name} of {source}: ")
    cfg = deep_merge(deep_merge(run["defaults"], section), per_algo.get(algo, {}))
    for text in overrides:
        key, value = parse_override(text)
        if key not in flat_schema:
            raise _unknown_key(key, flat_schema)
        if isinstance(value, dict):
            default = flat_schema[key]
            raise ConfigError(f"{key} must be {type(default).__name__} (like {default!r}), got the mapping {value!r}")
        _set(cfg, key, value)
    return _finish(cfg, profile, algo, env, budget, seed)


def reading_runs(workflow: dict) -> list[tuple[str, str, str, str]]:
    """Where each reading of the workflow config (`readings`, `reading_switches`) runs: one
    (reading, algo, env, name) per algorithm and env, at ablation_budget x ablation_seeds. A
    reading_switches entry is its list of --set switches (MUSBO on ablation_env) or a mapping
    {set: [...], algos: [...], envs: [...]} (algos default [musbo], envs [ablation_env]). name: the
    run's folder under results/<profile>/readings/, the reading for MUSBO and <reading>/<algo> for
    another algorithm (variant_of reads it back)."""
    runs = []
    for reading in workflow["readings"]:
        entry = workflow["reading_switches"][reading]
        entry = entry if isinstance(entry, dict) else {}
        for algo in entry.get("algos", ["musbo"]):
            for env in entry.get("envs", [workflow["ablation_env"]]):
                runs.append((reading, algo, env, reading if algo == "musbo" else f"{reading}/{algo}"))
    return runs


def variant_of(workflow: dict, kind: str, name: str) -> tuple[str, list[str]]:
    """(algo, --set switches) of the run folder results/<profile>/<kind>/<name>/: kind runs (name
    = the algo), ablations (MUSBO, ablation_switches) or readings (name = reading[/algo])."""
    if kind == "runs":
        return name, []
    switches = workflow.get("ablation_switches" if kind == "ablations" else "reading_switches", {})
    variant, _, algo = name.partition("/") if kind == "readings" else (name, "", "")
    if variant not in switches:
        raise ConfigError(f"{kind}/{name} is no run of the config: {variant!r} has no entry in "
                          f"{'ablation' if kind == 'ablations' else 'reading'}_switches")
    entry = switches[variant]
    return algo or "musbo", list(entry["set"] if isinstance(entry, dict) else entry)


def check_run_config(cfg: dict, where: str = "") -> dict:
    """A resolved run config read back from a file (`python -m algos.run --run-config FILE`),
    validated completely again: the same checks as resolve_run_config, and batch_size must be
    budget / deployments. Returns it with the types resolve_run_config gives."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}a run config must be a mapping, got {type(cfg).__name__}")
    absent = [k for k in RUN_KEYS if k not in cfg]
    if absent:
        raise ConfigError(f"{where}missing run key(s) {', '.join(absent)}; write the file with "
                          f"python -m algos.config write-run-config")
    _check_identity(*(cfg[k] for k in RUN_KEYS[:5]))
    tree = {k: v for k, v in cfg.items() if k not in RUN_KEYS}
    resolved = _finish(tree, *(cfg[k] for k in RUN_KEYS[:5]), where=where)
    if cfg["batch_size"] != resolved["batch_size"]:
        raise ConfigError(f"{where}batch_size={cfg['batch_size']!r} but budget_samples.{cfg['budget']} / deployments "
                          f"gives {resolved['batch_size']}; write the file with python -m algos.config write-run-config")
    return resolved


def config_hash(cfg: dict) -> str:
    """sha256 (hex) of the canonical JSON of a resolved run config; its first 12 characters
    name the config in directory names (stale-<hash12>/)."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def read_run_config(path) -> dict:
    """A run config file, validated (check_run_config)."""
    path = Path(path)
    try:
        data = read_config_file(path)
    except OSError as err:
        raise ConfigError(f"cannot read the run config {path} ({err.strerror}); write it with "
                          f"python -m algos.config write-run-config") from None
    return check_run_config(data, where=f"in {path}: ")


def write_run_config(cfg: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m algos.config")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-run-config", help="resolve one run's config and write it as YAML")
    w.add_argument("--out", required=True, type=Path)
    w.add_argument("--profile", required=True)
    w.add_argument("--algo", required=True, choices=ALGOS)
    w.add_argument("--env", required=True)
    w.add_argument("--budget", required=True, choices=BUDGETS)
    w.add_argument("--seed", required=True, type=int)
    w.add_argument("--workflow-config", type=Path, default=None, help="the merged Snakemake config as YAML")
    w.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        workflow = None
        if args.workflow_config is not None:
            workflow = _read_yaml(args.workflow_config)
        cfg = resolve_run_config(args.profile, args.algo, args.env, args.budget, args.seed, args.overrides, workflow)
        write_run_config(cfg, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out} (config hash {config_hash(cfg)[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
