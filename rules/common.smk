# The config check, the paths, each run's resolved config, and the "which runs does this output
# read" helpers of the workflow; no rules here (they live in runs.smk and analysis.smk).
import importlib.util
import os
import re
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the project's packages (algos, envs, analysis)


def _check_config_files():
    """Snakemake reads each config file itself and lets a key given twice (the last one wins)
    and anchors and aliases through: the project's loader (algos.config) refuses them."""
    from algos.config import ConfigError, read_config_file

    for path in workflow.configfiles:
        try:
            read_config_file(path)
        except ConfigError as err:
            raise WorkflowError(f"config: {err}") from None


_check_config_files()
validate(config, "../config/schema.yaml")

# ------------------------------------------------------------------ the config
# `--config` passes strings (`--config 'seeds=[0,1]'` gives ["0", "1"]); the schema accepts
# strings of digits where a whole number goes, and here they become integers.
_WHOLE_NUMBERS = ("seeds", "ablation_seeds", "resources.threads", "resources.gpu", "resources.mem_mb",
                  "resources.retries", "resources.runtime_min", "resources.max_runtime_min")


def _to_int(value):
    if isinstance(value, list):
        return [_to_int(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_int(v) for k, v in value.items()}
    return int(value)


def _coerce_whole_numbers():
    for dotted in _WHOLE_NUMBERS:
        *parents, leaf = dotted.split(".")
        tree = config
        for part in parents:
            tree = tree.get(part, {})
        if leaf in tree:
            tree[leaf] = _to_int(tree[leaf])


_coerce_whole_numbers()


def _check_cross_references():
    """What the schema cannot say: every ablation and reading has its switches, seeds are
    unique, job sizes are positive."""
    for names, switches in (("ablations", "ablation_switches"), ("readings", "reading_switches")):
        missing = [a for a in config[names] if a not in config[switches]]
        if missing:
            raise WorkflowError(f"config: {names} {missing} have no entry in {switches} "
                                f"(known: {sorted(config[switches])})")
    for key in ("seeds", "ablation_seeds"):
        if len(set(config[key])) != len(config[key]):
            raise WorkflowError(f"config: {key} {config[key]} repeats a seed; list each seed once")
    for key in ("threads", "mem_mb"):
        if config["resources"][key] < 1:
            raise WorkflowError(f"config: resources.{key}={config['resources'][key]} must be at least 1")


_check_cross_references()

PROFILE = config["profile"]
RESULTS = f"results/{PROFILE}"
LOGS = f"logs/{PROFILE}"
BENCHMARKS = f"benchmarks/{PROFILE}"
# The paper profile writes paper_figures/ (`snakemake paper_figures/fig2.pdf` is the paper's
# Fig. 2); every other profile its own folder, so no profile's target is another's file.
FIGURES = "paper_figures" if PROFILE == "paper" else f"paper_figures/{PROFILE}"
# The merged config (config/paper.yaml, --configfile, --config) as the analysis jobs read it.
WORKFLOW_CONFIG = f"{RESULTS}/workflow_config.yaml"

# ------------------------------------------------------------------ the jobs' Python
# The modules every job imports. Snakemake's own Python needs them too, to resolve and check
# every run's config now (below), unless --use-conda gives the jobs their own environment.
JOB_MODULES = ("yaml", "numpy", "torch", "gymnasium", "mujoco", "dm_control", "scipy", "pandas", "matplotlib")


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


MISSING_MODULES = [m for m in JOB_MODULES if not _importable(m)]
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
if MISSING_MODULES and not USE_CONDA:
    raise WorkflowError(
        f"Snakemake's Python ({sys.executable}) cannot import {', '.join(MISSING_MODULES)}, which the "
        "jobs need: run `make setup` and start .venv/bin/snakemake, or add --use-conda (environment.yml)."
    )
# Jobs run the Python that runs Snakemake (the .venv of `make setup`), also when that is not
# on PATH; with --use-conda the job's activated environment goes in front of it, so conda wins.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))

# ------------------------------------------------------------------ outputs
# The files of one run (see algos/run.py). Declared update(): Snakemake neither deletes them
# before a job nor after a failed one; the run itself moves an old run of another config into
# stale-<hash>/ (--replace-stale) and resumes its own from checkpoints/ and batches/.
RUN_FILES = {
    "metrics": "metrics.csv",  # written last: the completion marker
    "eval_returns": "eval_returns.csv",
    "model_eval": "model_eval.csv",
    "config": "config.yaml",
    "provenance": "provenance.json",
}
# What the analysis reads of a run (it also reads novelty.csv and scalars.csv where present).
READ_BY_ANALYSIS = ("metrics.csv", "eval_returns.csv", "model_eval.csv")

# The analysis targets (`python -m analysis TARGET`) and their files in FIGURES.
ANALYSIS_OUTPUTS = {
    "fig2": ["fig2.pdf"],
    "fig3": ["fig3.pdf"],
    "fig4": ["fig4.pdf"],
    "fig5": ["fig5.pdf"],
    "fig6": ["fig6.pdf"],
    "table1": [f"table1_novelty.{ext}" for ext in ("csv", "md", "tex")],
    "table2": [f"table2_hyperparameters.{ext}" for ext in ("csv", "md", "tex")],
    "aggregate": ["aggregate.pdf"],
    "ablation": ["ablation.pdf"],
    "readings": ["readings.pdf"],
    "diagnostics": ["diagnostics.pdf"],
    "claims": ["claims.md"],
    "report": ["report.md"],
}
# The paper's split of the envs over the learning-curve figures (500k: Figs. 2, 3; 250k: 4, 5).
FIGURE_PANELS = {
    "fig2": (["walker2d", "hopper"], "500k"),
    "fig3": (["ant", "cheetah-run", "halfcheetah"], "500k"),
    "fig4": (["walker2d", "hopper"], "250k"),
    "fig5": (["ant", "cheetah-run", "halfcheetah"], "250k"),
}
FIG6_ALGOS = ["musbo", "bremen"]  # Fig. 6 compares the two models that feed TRPO
FULL_BUDGET = "500k"  # Table 1 and Fig. 6 use the full data budget
VARIANT_ALGO = "musbo"  # every ablation changes one part of MUSBO; a reading may name other algorithms
# The three kinds of run directory: results/<profile>/<kind>/<name>/<env>/<budget>/seed<N>/,
# <name> being the algo (runs), the ablation, or the reading, <reading>/<algo> for an algorithm
# other than MUSBO (algos.config.reading_runs); the training rule of each.
RUN_KINDS = {"runs": "run", "ablations": "ablation_run", "readings": "reading_run"}
from algos.config import reading_runs, variant_of  # noqa: E402 (needs yaml only, as Snakemake)

READING_RUNS = reading_runs(config)  # (reading, algo, env, name) per algorithm and env of each reading
SWITCHES = {"runs": {}, "ablations": config["ablation_switches"],
            "readings": {name: variant_of(config, "readings", name)[1] for *_, name in READING_RUNS}}


def variant_algo(kind, name):
    """The algorithm of run folder <kind>/<name>/ (algos.config.variant_of)."""
    return variant_of(config, kind, name)[0]


ANALYSIS_RESOURCES = {"threads": 1, "mem_mb": 4000, "runtime": 60}


# ------------------------------------------------------------------ time limits (issue 21)
# resources.max_runtime_min caps a training job's runtime (SLURM --time) at what a partition allows:
# a longer run becomes several jobs. Each stops itself stop_margin_min before its limit, inside the
# phase it is in (mid-phase checkpoint, exit 75: algos/core/preempt.py), and the retry resumes there.
def _time_limits():
    """(cap, margin, every) of the config; `--config` gives the minutes as strings (the schema's pattern)."""
    res = config["resources"]
    cap, margin = res.get("max_runtime_min", 0), float(res.get("stop_margin_min", 10))
    short = min(res["runtime_min"].values())
    if cap and not 0 < margin < min(cap, short):
        raise WorkflowError(f"config: resources.stop_margin_min={margin:g} must be above 0 and below every training "
                            f"job's runtime (resources.max_runtime_min={cap}, the shortest runtime_min {short}); "
                            f"lower it")
    return cap, margin, float(res.get("checkpoint_every_min", 0))


MAX_RUNTIME_MIN, STOP_MARGIN_MIN, CHECKPOINT_EVERY_MIN = _time_limits()


def job_runtime_min(env):
    """A training job's runtime: the env's runtime_min, at most resources.max_runtime_min."""
    runtime = config["resources"]["runtime_min"][env]
    return min(runtime, MAX_RUNTIME_MIN) if MAX_RUNTIME_MIN else runtime


def stop_after_min(env):
    """When the run stops itself (--stop-after-min): stop_margin_min before its job's runtime under
    a cap, never ("0") without one."""
    return f"{job_runtime_min(env) - STOP_MARGIN_MIN:g}" if MAX_RUNTIME_MIN else "0"


def training_retries():
    """resources.retries, plus the further jobs the longest capped run needs (one per stretch of
    max_runtime_min - stop_margin_min)."""
    stretches = 1
    if MAX_RUNTIME_MIN:
        stretches = max(-(-runtime // (MAX_RUNTIME_MIN - STOP_MARGIN_MIN)) for runtime in
                        config["resources"]["runtime_min"].values())
    return config["resources"]["retries"] + int(stretches) - 1


def _one_of(names):
    return "|".join(re.escape(name) for name in sorted(set(names))) or "(?!)"  # none: matches nothing


# Every value a wildcard may take (the config's own lists), for wildcard_constraints.
ALGO_PATTERN = _one_of(config["algos"] + FIG6_ALGOS + [VARIANT_ALGO] + [algo for _, algo, _, _ in READING_RUNS])
ENV_PATTERN = _one_of(
    config["envs"] + [config["ablation_env"], config["novelty_env"], config["model_eval_env"]]
    + [env for _, _, env, _ in READING_RUNS]
)
BUDGET_PATTERN = _one_of(config["budgets"] + [config["ablation_budget"], FULL_BUDGET])
ABLATION_PATTERN = _one_of(config["ablations"])
READING_PATTERN = _one_of([name for *_, name in READING_RUNS])
SEED_PATTERN = "0|[1-9][0-9]*"  # one spelling per seed: seed0, never seed00


# ------------------------------------------------------------------ which runs
def _in_grid(names, grid):
    return [name for name in names if name in grid]


def main_run_keys(algos=None, envs=None, budgets=None, seeds=None):
    """(kind, algo, env, budget, seed) of main runs; an argument left out means the config's list."""
    return [
        ("runs", algo, env, budget, seed)
        for algo in (config["algos"] if algos is None else algos)
        for env in (config["envs"] if envs is None else envs)
        for budget in (config["budgets"] if budgets is None else budgets)
        for seed in (config["seeds"] if seeds is None else seeds)
    ]


def variant_run_keys(kind):
    """The ablation or reading runs at ablation_budget: each ablation on ablation_env, each
    reading on its algorithms and envs (READING_RUNS)."""
    where = ([(name, config["ablation_env"]) for name in config["ablations"]] if kind == "ablations"
             else [(name, env) for _, _, env, name in READING_RUNS])
    return [
        (kind, name, env, config["ablation_budget"], seed)
        for name, env in where
        for seed in config["ablation_seeds"]
    ]


def target_run_keys(target):
    """The runs that analysis TARGET reads."""
    if target in FIGURE_PANELS:
        envs, budget = FIGURE_PANELS[target]
        return main_run_keys(envs=_in_grid(envs, config["envs"]), budgets=[budget])
    if target == "fig6":
        return main_run_keys(algos=_in_grid(FIG6_ALGOS, config["algos"]), envs=[config["model_eval_env"]],
                             budgets=[FULL_BUDGET], seeds=config["ablation_seeds"])
    if target == "table1":
        return main_run_keys(envs=[config["novelty_env"]], budgets=[FULL_BUDGET], seeds=config["ablation_seeds"])
    if target == "table2":  # generated from the config alone
        return []
    if target in ("aggregate", "diagnostics"):
        return main_run_keys()
    baseline = main_run_keys(algos=[VARIANT_ALGO], envs=[config["ablation_env"]],
                             budgets=[config["ablation_budget"]], seeds=config["ablation_seeds"])
    if target == "ablation":
        return baseline + variant_run_keys("ablations")
    if target == "readings":  # each reading run beside its algorithm's default run on its env
        defaults = [key for _, algo, env, _ in READING_RUNS
                    for key in main_run_keys(algos=[algo], envs=[env], budgets=[config["ablation_budget"]],
                                             seeds=config["ablation_seeds"])]
        return list(dict.fromkeys(baseline + defaults)) + variant_run_keys("readings")
    if target in ("claims", "report"):
        keys = [key for t in ANALYSIS_OUTPUTS if t not in ("claims", "report") for key in target_run_keys(t)]
        return list(dict.fromkeys(keys))  # each run once, in a stable order
    raise ValueError(f"unknown analysis target {target!r}")


def run_dir(kind, name, env, budget, seed):
    return f"{RESULTS}/{kind}/{name}/{env}/{budget}/seed{seed}"


def run_config_path(kind, name, env, budget, seed):
    """The resolved config of one run, beside its directory (seed<N>.run_config.yaml sorts
    before seed<N>/ in git, so a fresh checkout writes it first and its runs stay up to date)."""
    return f"{run_dir(kind, name, env, budget, seed)}.run_config.yaml"


# Every run any target may ask for, with the --set switches that make it.
PLANNED_RUNS = {
    key: SWITCHES[key[0]].get(key[1], [])
    for target in ANALYSIS_OUTPUTS
    for key in target_run_keys(target)
}


# ------------------------------------------------------------------ the runs' configs
def _write_if_changed(path, text):
    """Write only when the content changes: the file's mtime then says when its run's config
    last changed, and a run is redone exactly when its config did."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _plain(value):
    """Snakemake's config as plain dicts and lists (for yaml.safe_dump)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _resolve_every_run():
    """Each run's config, resolved from the merged config and checked now, before any job (a
    typo in run.defaults of a --configfile stops here, naming the key), and written beside its
    run directory, where the run's job reads it (`python -m algos.run --run-config`)."""
    from algos.config import ConfigError, resolve_run_config

    merged = _plain(config)
    for (kind, name, env, budget, seed), switches in PLANNED_RUNS.items():
        algo = variant_algo(kind, name)
        try:
            cfg = resolve_run_config(PROFILE, algo, env, budget, seed, switches, workflow_config=merged)
        except ConfigError as err:
            where = f" ({kind} {name}: {' '.join(switches)})" if switches else ""
            raise WorkflowError(f"config: {err}{where}") from None
        _write_if_changed(run_config_path(kind, name, env, budget, seed), yaml.safe_dump(cfg, sort_keys=False))


def _request(kind, name, env, budget, seed):
    """Without the project's packages (--use-conda), what a run's config is resolved from:
    the run section of its env and its switches (rule run_config resolves it in the job)."""
    run = config["run"]
    return {
        "profile": PROFILE,
        "run": {"defaults": _plain(run["defaults"]), "envs": {env: _plain(run.get("envs", {}).get(env, {}))}},
        "switches": list(SWITCHES[kind].get(name, [])),
    }


def run_request_path(kind, name, env, budget, seed):
    return f"{RESULTS}/run_requests/{kind}/{name}/{env}/{budget}/seed{seed}.yaml"


RESOLVE_NOW = not MISSING_MODULES
if RESOLVE_NOW:
    _resolve_every_run()
else:
    for (kind, name, env, budget, seed) in PLANNED_RUNS:
        _write_if_changed(run_request_path(kind, name, env, budget, seed),
                          yaml.safe_dump(_request(kind, name, env, budget, seed), sort_keys=False))
_write_if_changed(WORKFLOW_CONFIG, yaml.safe_dump(_plain(config), sort_keys=False))


def run_key(kind, wildcards):
    name = wildcards.algo if kind == "runs" else wildcards.get(kind[:-1])
    key = (kind, name, wildcards.env, wildcards.budget, int(wildcards.seed))
    if key not in PLANNED_RUNS:
        raise WorkflowError(f"{run_dir(*key)} is not a run of profile {PROFILE}'s grid (config/{PROFILE}.yaml: "
                            "algos, envs, budgets, seeds, ablation_*, readings); add it there to run it")
    return key


def run_config_input(kind):
    return lambda wildcards: run_config_path(*run_key(kind, wildcards))


def run_outputs(run_dir_pattern):
    """The declared outputs of one run directory, by name."""
    return {name: update(f"{run_dir_pattern}/{file}") for name, file in RUN_FILES.items()}


def analysis_inputs(target):
    """The run files (and, for the report, the other outputs) that TARGET reads."""
    files = [f"{run_dir(*key)}/{file}" for key in target_run_keys(target) for file in READ_BY_ANALYSIS]
    if target == "report":
        files += [f"{FIGURES}/{f}" for t in ANALYSIS_OUTPUTS if t != "report" for f in ANALYSIS_OUTPUTS[t]]
    return files


def results_dir(wildcards, input):
    """results/<profile> as the job sees it: taken from a run file it reads (right even where a
    storage plugin relocates inputs), RESULTS for a target that reads no run."""
    for path in input:
        parts = path.split("/")
        for kind in RUN_KINDS:
            if kind in parts:
                return "/".join(parts[: parts.index(kind)])
    return RESULTS


# The report's sections (`snakemake --report report.html`).
REPORT_CATEGORIES = {
    **{t: "Figures of the paper" for t in ("fig2", "fig3", "fig4", "fig5", "fig6")},
    **{t: "Tables of the paper" for t in ("table1", "table2")},
    **{t: "Beyond the paper" for t in ("aggregate", "ablation", "readings", "diagnostics")},
    **{t: "Claims and report" for t in ("claims", "report")},
}
