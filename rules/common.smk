# The config check, the paths, and the "which runs does this output read" helpers of the
# workflow; no rules here (they live in runs.smk and analysis.smk).
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../config/schema.yaml")

PROFILE = config["profile"]
RESULTS = f"results/{PROFILE}"
LOGS = f"logs/{PROFILE}"
BENCHMARKS = f"benchmarks/{PROFILE}"
FIGURES = "paper_figures"

# The files of one run (see algos/run.py). Snakemake deletes these five before a job starts and
# after it fails; a run keeps its resume state elsewhere in its directory (checkpoints/,
# batches/), which Snakemake never touches, so a retried or rerun job resumes where it stopped.
RUN_FILES = {
    "metrics": "metrics.csv",  # written last: the completion marker
    "eval_returns": "eval_returns.csv",
    "model_eval": "model_eval.csv",
    "config": "config.yaml",
    "provenance": "provenance.json",
}
# What the analysis reads of a run.
READ_BY_ANALYSIS = ("metrics.csv", "eval_returns.csv", "model_eval.csv")

# The analysis targets (`python -m analysis TARGET`) and their files in paper_figures/.
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
ABLATION_ALGO = "musbo"  # every ablation switches off one part of MUSBO
ANALYSIS_RESOURCES = {"threads": 1, "mem_mb": 4000, "runtime": 60}


def _check_cross_references():
    """What the schema cannot say: every ablation has its switches."""
    missing = [a for a in config["ablations"] if a not in config["ablation_switches"]]
    if missing:
        raise WorkflowError(
            f"config: ablations {missing} have no entry in ablation_switches "
            f"(known: {sorted(config['ablation_switches'])})"
        )


_check_cross_references()


def _one_of(names):
    return "|".join(re.escape(name) for name in sorted(set(names)))


# Every value a wildcard may take (the config's own lists), for wildcard_constraints.
ALGO_PATTERN = _one_of(config["algos"] + FIG6_ALGOS + [ABLATION_ALGO])
ENV_PATTERN = _one_of(
    config["envs"]
    + [config["ablation_env"], config["novelty_env"], config["model_eval_env"]]
)
BUDGET_PATTERN = _one_of(config["budgets"] + [config["ablation_budget"], FULL_BUDGET])
ABLATION_PATTERN = _one_of(config["ablations"]) or "(?!)"  # no ablations: matches nothing


# Jobs run the Python that runs Snakemake (the .venv of `make setup`), also when that is not
# on PATH; with --use-conda the job's activated environment goes in front of it, so conda wins.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def run_outputs(run_dir):
    """The declared outputs of one run directory, by name."""
    return {name: f"{run_dir}/{file}" for name, file in RUN_FILES.items()}


def main_runs(algos=None, envs=None, budgets=None, seeds=None):
    """The analysis inputs of main runs; an argument left out means the config's whole list."""
    return [
        f"{RESULTS}/runs/{algo}/{env}/{budget}/seed{seed}/{file}"
        for algo in (config["algos"] if algos is None else algos)
        for env in (config["envs"] if envs is None else envs)
        for budget in (config["budgets"] if budgets is None else budgets)
        for seed in (config["seeds"] if seeds is None else seeds)
        for file in READ_BY_ANALYSIS
    ]


def ablation_runs():
    """The ablation figure's runs: MUSBO and each ablation, on ablation_env at ablation_budget."""
    env, budget, seeds = config["ablation_env"], config["ablation_budget"], config["ablation_seeds"]
    return main_runs(algos=[ABLATION_ALGO], envs=[env], budgets=[budget], seeds=seeds) + [
        f"{RESULTS}/ablations/{ablation}/{env}/{budget}/seed{seed}/{file}"
        for ablation in config["ablations"]
        for seed in seeds
        for file in READ_BY_ANALYSIS
    ]


def _in_grid(names, grid):
    return [name for name in names if name in grid]


def analysis_inputs(target):
    """The run files (and, for the report, the other outputs) that TARGET reads."""
    if target in FIGURE_PANELS:
        envs, budget = FIGURE_PANELS[target]
        return main_runs(envs=_in_grid(envs, config["envs"]), budgets=[budget])
    if target == "fig6":
        return main_runs(
            algos=_in_grid(FIG6_ALGOS, config["algos"]),
            envs=[config["model_eval_env"]],
            budgets=[FULL_BUDGET],
            seeds=config["ablation_seeds"],
        )
    if target == "table1":
        return main_runs(envs=[config["novelty_env"]], budgets=[FULL_BUDGET], seeds=config["ablation_seeds"])
    if target == "table2":  # generated from the config alone
        return sorted({"config/paper.yaml", f"config/{PROFILE}.yaml"})
    if target == "aggregate":
        return main_runs()
    if target == "ablation":
        return ablation_runs()
    everything = sorted(set(main_runs() + ablation_runs() + analysis_inputs("fig6") + analysis_inputs("table1")))
    if target == "claims":
        return everything
    if target == "report":
        others = [t for t in ANALYSIS_OUTPUTS if t != "report"]
        return everything + [f"{FIGURES}/{f}" for t in others for f in ANALYSIS_OUTPUTS[t]]
    raise ValueError(f"unknown analysis target {target!r}")


def results_dir(wildcards, input):
    """results/<profile> as the job sees it: taken from a run file it reads (right even where a
    storage plugin relocates inputs), RESULTS for a target that reads no run."""
    for path in input:
        parts = path.split("/")
        for kind in ("runs", "ablations"):
            if kind in parts:
                return "/".join(parts[: parts.index(kind)])
    return RESULTS


def set_switches(ablation):
    """`--set key=value ...` for one ablation, from config ablation_switches."""
    return " ".join(f"--set {shlex.quote(s)}" for s in config["ablation_switches"][ablation])
