"""The Snakemake workflow (Snakefile, rules/, config/schema.yaml, profiles/).

Every Snakemake command here runs in a fresh `git clone` (fresh_clone: the repository as the
working tree holds it, committed into a throw-away clone and cloned again, so files and mtimes
are what a user's clone gets; the repository itself is never written). Pinned: the user's
commands as typed (profiles/default is loaded by itself) schedule the paper grid, one figure
schedules only its runs, outputs name their profile; a bad config (also a typo in run.defaults
of a --configfile) fails at parse time naming the key; Snakemake without the project's packages
fails once naming the fix; an edit of a profile reruns exactly the runs it changes, and the rerun
keeps the old run in stale-*/; with a stand-in for the run CLI, a failed run is retried and
resumes, --keep-going lets the other runs finish, a killed workflow resumes. Marked `slow`: the
whole smoke workflow for real, with the HTML report.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVS = ["walker2d", "hopper", "halfcheetah", "ant", "cheetah-run"]
ALGOS = ["musbo", "bremen", "mopo"]
ANALYSIS_FILES = {
    "fig2": ["fig2.pdf"], "fig3": ["fig3.pdf"], "fig4": ["fig4.pdf"], "fig5": ["fig5.pdf"],
    "fig6": ["fig6.pdf"],
    "table1": ["table1_novelty.csv", "table1_novelty.md", "table1_novelty.tex"],
    "table2": ["table2_hyperparameters.csv", "table2_hyperparameters.md", "table2_hyperparameters.tex"],
    "aggregate": ["aggregate.pdf"], "ablation": ["ablation.pdf"], "readings": ["readings.pdf"],
    "diagnostics": ["diagnostics.pdf"], "claims": ["claims.md"], "report": ["report.md"],
}
RUN_FILES = ["metrics.csv", "eval_returns.csv", "model_eval.csv", "config.yaml", "provenance.json"]
TRAINING_RULES = ("run", "ablation_run", "reading_run")


def git(*args, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def fresh_clone(dest: Path) -> Path:
    """A clone of the repository as its working tree is now: HEAD cloned, the working tree's
    changes (modified, new, deleted; .gitignore respected) committed in that staging clone, and
    the staging clone cloned again into DEST, so that every file is checked out by git."""
    stage = dest.parent / f"{dest.name}-stage"
    git("clone", "-q", str(ROOT), str(stage), cwd=dest.parent)
    for name in git("ls-files", "-z", "-m", "-o", "--exclude-standard", cwd=ROOT).split("\0"):
        if name and (ROOT / name).is_file():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, stage / name)
    for name in git("ls-files", "-z", "-d", cwd=ROOT).split("\0"):
        if name:
            (stage / name).unlink(missing_ok=True)
    git("add", "-A", cwd=stage)
    git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "--allow-empty",
        "-m", "working tree", cwd=stage)
    git("clone", "-q", str(stage), str(dest), cwd=dest.parent)
    shutil.rmtree(stage)
    return dest


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """One fresh clone for the dry runs of this module (they only add run configs to it)."""
    return fresh_clone(tmp_path_factory.mktemp("clone") / "repo")


def snakemake(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
              python: str = sys.executable):
    """`python -m snakemake ARGS` in CWD with this interpreter's bin/ first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.run([python, "-m", "snakemake", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PATH": path, **(env or {})})
    proc.log = proc.stdout + proc.stderr
    return proc


def dry_run(*args: str, cwd: Path, force: bool = True):
    """A dry run (forced with -F unless force=False: then what a user's command would do)."""
    proc = snakemake(*args, "--dry-run", *(["--forceall"] if force else []), cwd=cwd)
    assert proc.returncode == 0, proc.log
    return jobs_of(proc.log)


def jobs_of(log: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a Snakemake log announces."""
    jobs = []
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", log, re.M):
        match = re.search(r"^\s+wildcards: (.*)$", body, re.M)
        wildcards = dict(item.split("=", 1) for item in match.group(1).split(", ")) if match else {}
        jobs.append((rule, wildcards))
    return jobs


def counts(jobs) -> dict:
    out: dict = {}
    for rule, _ in jobs:
        out[rule] = out.get(rule, 0) + 1
    return out


def profile_config(name: str) -> dict:
    """config/paper.yaml deep-merged with config/<name>.yaml, as Snakemake merges them."""
    def merge(base, over):
        for key, value in over.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    return merge(config, yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())) if name != "paper" else config


def analysis_jobs(expected_targets) -> dict:
    return {target: 1 for target in expected_targets}


def reading_runs_of(config: dict) -> int:
    """How many reading runs a profile plans: a reading's list of switches is MUSBO on
    ablation_env, a mapping names its algos and envs (config/paper.yaml, reading_switches)."""
    entries = [config["reading_switches"][name] for name in config["readings"]]
    return len(config["ablation_seeds"]) * sum(
        len(e.get("algos", [1])) * len(e.get("envs", [1])) if isinstance(e, dict) else 1 for e in entries)


# ------------------------------------------------------------------ static checks
def test_lint_is_clean(clone):
    proc = snakemake("--lint", cwd=clone)
    assert proc.returncode == 0 and "Congratulations" in proc.log, proc.log


@pytest.mark.parametrize("bad, named", [
    ("envs: [walker2d, hoper]", "instance['envs'][1]"),
    ("algos: [musbo, sac]", "instance['algos'][1]"),
    ("budgets: [100k]", "instance['budgets'][0]"),
    ("seed: [0]", "'seed' was unexpected"),
    ("resources: {gpus: 1}", "'gpus' was unexpected"),
    ("ablations: [no_such_switch]", "no_such_switch"),
    ("readings: [no_such_reading]", "no_such_reading"),
    ("seeds: [0, 0]", "repeats a seed"),
    # a typo inside run.defaults of a --configfile: caught when the runs' configs are resolved
    ("run: {defaults: {trpo: {delat: 0.1}}}", "trpo.delat"),
    ("run: {envs: {hopper: {trpo: {delta: -1}}}}", "trpo.delta"),
    ("ablation_switches: {no_exploration_noise: [musbo.exploration_noise=sometimes]}", "musbo.exploration_noise"),
])
def test_a_bad_config_fails_at_parse_time_naming_the_key(clone, tmp_path, bad, named):
    (tmp_path / "bad.yaml").write_text(bad + "\n")
    proc = snakemake("all", "--dry-run", f"--configfile={tmp_path / 'bad.yaml'}", cwd=clone)
    assert proc.returncode != 0
    assert named in proc.log, proc.log
    assert not jobs_of(proc.log), "a job was scheduled before the config was checked"


@pytest.mark.parametrize("text, named", [
    ("seeds: [0]\nseeds: [0, 1]\n", "bad.yaml is not valid YAML at line 2: key 'seeds' is given twice"),
    ("seeds: &s [0]\nablation_seeds: *s\n", "bad.yaml is not valid YAML at line 1: key 'seeds' holds an anchor"),
])
def test_a_profile_file_with_a_duplicate_key_or_an_alias_fails_at_parse_time(clone, tmp_path, text, named):
    """Snakemake reads --configfile itself (the last duplicate winning); the project's loader refuses it."""
    (tmp_path / "bad.yaml").write_text(text)
    proc = snakemake("all", "--dry-run", f"--configfile={tmp_path / 'bad.yaml'}", cwd=clone)
    assert proc.returncode != 0 and named in proc.log, proc.log
    assert not jobs_of(proc.log)


def test_config_overrides_of_list_keys_work(clone):
    jobs = dry_run("paper_figures/fig2.pdf", "--config", "seeds=[0,1]", cwd=clone)
    assert counts(jobs) == {"run": 3 * 2 * 2, "fig2": 1}
    assert {w["seed"] for rule, w in jobs if rule == "run"} == {"0", "1"}


def test_every_wildcard_is_constrained(clone):
    # A value outside the config's lists, or a second spelling of a seed, matches no rule.
    for target in ["results/paper/runs/sac/hopper/100k/seedX/metrics.csv",
                   "results/paper/runs/musbo/hopper/500k/seed00/metrics.csv",
                   "results/paper/ablations/no_such/hopper/500k/seed0/metrics.csv",
                   "results/paper/readings/no_such/halfcheetah/500k/seed0/metrics.csv"]:
        proc = snakemake("--dry-run", target, cwd=clone)
        assert proc.returncode != 0 and "MissingRuleException" in proc.log, (target, proc.log)
    proc = snakemake("--dry-run", "results/paper/runs/musbo/hopper/500k/seed7/metrics.csv", cwd=clone)
    assert proc.returncode != 0 and "not a run of profile paper" in proc.log, proc.log
    text = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))])
    # the run_config rule constrains its own kind and name (run_wildcard names algo, ablation, reading)
    used = (set(re.findall(r"\{\{(\w+)\}\}", text)) - {"kind", "name", "run_wildcard"}) | {"algo", "ablation", "reading"}
    constrained = set(re.findall(r"^\s+(\w+)=", text.split("wildcard_constraints:")[1].split("\n\n")[0], re.M))
    assert used <= constrained, (used, constrained)


# ------------------------------------------------------------------ the user's commands, as typed
def test_the_users_command_schedules_the_paper_grid_on_a_fresh_clone(clone):
    config = profile_config("paper")
    proc = snakemake("-n", "--cores", "8", "all", cwd=clone)  # no --profile: profiles/default loads itself
    assert proc.returncode == 0, proc.log
    assert "profiles/default" in proc.log
    jobs = jobs_of(proc.log)
    runs = [w for rule, w in jobs if rule == "run"]
    assert {(w["algo"], w["env"], w["budget"], w["seed"]) for w in runs} == {
        (a, e, b, str(s)) for a in ALGOS for e in ENVS for b in ["500k", "250k"] for s in range(5)}
    variants = len(config["ablation_seeds"])
    assert counts(jobs) == {"run": 150, "ablation_run": len(config["ablations"]) * variants,
                            "reading_run": reading_runs_of(config), "all": 1,
                            **analysis_jobs(ANALYSIS_FILES)}


def test_one_figure_as_typed_schedules_exactly_its_runs(clone):
    proc = snakemake("-n", "paper_figures/fig2.pdf", cwd=clone)  # no --cores: profiles/default gives them
    assert proc.returncode == 0, proc.log
    jobs = jobs_of(proc.log)
    assert counts(jobs) == {"run": 30, "fig2": 1}
    assert {(w["env"], w["budget"]) for rule, w in jobs if rule == "run"} == {("walker2d", "500k"), ("hopper", "500k")}


@pytest.mark.parametrize("profile", ["mini", "medium"])
def test_committed_runs_are_up_to_date_on_a_fresh_clone(clone, profile):
    # `make figures` (mini) or the medium grid's command on a fresh clone redraws; it redoes no
    # committed run (their configs are committed beside them and checked out first).
    committed = sorted(p for kind in ("runs", "ablations", "readings")
                       for p in (clone / "results" / profile / kind).glob("*/*/*/seed*") if (p / "metrics.csv").is_file())
    assert committed, f"no committed {profile} run"
    for run in committed:
        assert Path(f"{run}.run_config.yaml").is_file(), f"{run}: its run config is not committed"
    jobs = dry_run("all", f"--configfile=config/{profile}.yaml", cwd=clone, force=False)
    redone = [(rule, w) for rule, w in jobs if rule in TRAINING_RULES
              and (clone / "results" / profile / {"run": "runs", "ablation_run": "ablations", "reading_run": "readings"}[rule]
                   / (w.get("algo") or w.get("ablation") or w.get("reading")) / w["env"] / w["budget"] / f"seed{w['seed']}"
                   / "metrics.csv").is_file()]
    assert not redone, redone


@pytest.mark.parametrize("profile, runs", [("mini", 60), ("smoke", 30)])
def test_mini_and_smoke_grids_write_their_own_folder(clone, profile, runs):
    config = profile_config(profile)
    proc = snakemake("all", "--dry-run", "--forceall", f"--configfile=config/{profile}.yaml", cwd=clone)
    assert proc.returncode == 0, proc.log
    jobs = jobs_of(proc.log)
    assert counts(jobs)["run"] == runs == 3 * 5 * 2 * len(config["seeds"])
    assert counts(jobs)["ablation_run"] == len(config["ablations"]) * len(config["ablation_seeds"])
    assert counts(jobs)["reading_run"] == reading_runs_of(config)
    outputs = set(re.findall(r"^\s+output: (.*)$", proc.log, re.M))
    figures = {f for line in outputs for f in line.split(", ") if f.startswith("paper_figures/")}
    assert figures and all(f.startswith(f"paper_figures/{profile}/") for f in figures), figures


def test_a_users_own_profile_is_one_yaml_file(clone, tmp_path):
    (clone / "config" / "mine.yaml").write_text(
        "profile: mine\nseeds: [3]\nablation_seeds: [3]\nenvs: [hopper]\nalgos: [musbo]\n"
        "run: {defaults: {gamma: 0.98}}\n")
    try:
        jobs = dry_run("all", "--configfile=config/mine.yaml", cwd=clone)
        runs = [w for rule, w in jobs if rule == "run"]
        assert {(w["algo"], w["env"], w["seed"]) for w in runs} >= {("musbo", "hopper", "3")}
        written = yaml.safe_load((clone / "results/mine/runs/musbo/hopper/500k/seed3.run_config.yaml").read_text())
        assert written["gamma"] == 0.98 and written["profile"] == "mine" and written["seed"] == 3
    finally:
        (clone / "config" / "mine.yaml").unlink()


@pytest.mark.parametrize("target, envs, budget", [
    ("paper_figures/fig3.pdf", {"ant", "cheetah-run", "halfcheetah"}, "500k"),
    ("paper_figures/fig4.pdf", {"walker2d", "hopper"}, "250k"),
    ("paper_figures/fig5.pdf", {"ant", "cheetah-run", "halfcheetah"}, "250k"),
])
def test_each_learning_curve_figure_alone(clone, target, envs, budget):
    jobs = dry_run(target, cwd=clone)
    runs = [w for rule, w in jobs if rule == "run"]
    assert {w["env"] for w in runs} == envs and {w["budget"] for w in runs} == {budget}
    assert len(runs) == 3 * len(envs) * 5


def test_fig6_and_table1_use_their_env_and_the_ablation_seeds(clone):
    config = profile_config("paper")
    seeds = {str(s) for s in config["ablation_seeds"]}
    fig6 = [w for rule, w in dry_run("paper_figures/fig6.pdf", cwd=clone) if rule == "run"]
    assert {(w["algo"], w["env"], w["budget"]) for w in fig6} == {
        ("musbo", config["model_eval_env"], "500k"), ("bremen", config["model_eval_env"], "500k")}
    assert {w["seed"] for w in fig6} == seeds and len(fig6) == 2 * len(seeds)
    table1 = dry_run("paper_figures/table1_novelty.csv", cwd=clone)
    assert counts(table1) == {"run": 3 * len(seeds), "table1": 1}
    assert {(w["env"], w["budget"]) for rule, w in table1 if rule == "run"} == {(config["novelty_env"], "500k")}


def test_table2_needs_no_run_and_ablation_needs_musbo_and_its_variants(clone):
    assert counts(dry_run("table2", cwd=clone)) == {"table2": 1}
    config = profile_config("paper")
    seeds = len(config["ablation_seeds"])
    jobs = dry_run("paper_figures/ablation.pdf", cwd=clone)
    assert counts(jobs) == {"run": seeds, "ablation_run": len(config["ablations"]) * seeds, "ablation": 1}
    assert {(w["algo"], w["env"], w["budget"]) for r, w in jobs if r == "run"} == {
        ("musbo", config["ablation_env"], config["ablation_budget"])}


def test_readings_target_schedules_each_reading_on_its_algorithms_and_envs_beside_their_defaults(clone):
    """`snakemake -n readings` (paper profile): the readings of eqs. 9, 12, 22 and the calibrated
    alpha of eq. 12 for MUSBO on ablation_env; batch_full (trpo.batch_assembly=full) for MUSBO AND
    BREMEN on Hopper and Walker2d, BREMEN's under readings/batch_full/bremen/; each beside the
    default run of its algorithm and env; every run at ablation_budget x ablation_seeds, with its switches."""
    config = profile_config("paper")
    env, budget, seeds = config["ablation_env"], config["ablation_budget"], [str(s) for s in config["ablation_seeds"]]
    jobs = dry_run("readings", cwd=clone)
    musbo_only = ["eq9_raw", "eq9_std_sum", "eq12_std_sum", "eq12_std_mean", "eq22_variance", "eq12_alpha_calibrated"]
    expected = ({(name, env, budget, s) for name in musbo_only for s in seeds}
                | {(name, e, budget, s) for name in ("batch_full", "batch_full/bremen") for e in ("hopper", "walker2d")
                   for s in seeds})
    readings = [(w["reading"], w["env"], w["budget"], w["seed"]) for r, w in jobs if r == "reading_run"]
    assert sorted(readings) == sorted(expected)
    defaults = [(w["algo"], w["env"], w["budget"], w["seed"]) for r, w in jobs if r == "run"]
    assert sorted(defaults) == sorted({(a, e, budget, s) for a, e in [("musbo", env), ("musbo", "hopper"),
                                       ("musbo", "walker2d"), ("bremen", "hopper"), ("bremen", "walker2d")]
                                       for s in seeds})
    assert counts(jobs) == {"run": len(defaults), "reading_run": len(expected), "readings": 1}
    read = lambda path: yaml.safe_load((clone / "results/paper/readings" / path).read_text())  # noqa: E731
    for algo, folder in (("musbo", "batch_full"), ("bremen", "batch_full/bremen")):
        for e in ("hopper", "walker2d"):
            cfg = read(f"{folder}/{e}/{budget}/seed{seeds[0]}.run_config.yaml")
            assert (cfg["algo"], cfg["env"], cfg["trpo"]["batch_assembly"]) == (algo, e, "full")
    cfg = read(f"eq12_alpha_calibrated/{env}/{budget}/seed{seeds[0]}.run_config.yaml")
    assert (cfg["algo"], cfg["musbo"]["eq12_alpha"]) == ("musbo", "calibrated")


def test_each_run_gets_its_resolved_config_with_its_switches(clone):
    dry_run("readings", cwd=clone)
    config = profile_config("paper")
    env, budget = config["ablation_env"], config["ablation_budget"]
    for kind, switches in (("ablations", config["ablation_switches"]), ("readings", config["reading_switches"])):
        for name, sets in switches.items():
            if name not in config[kind] or isinstance(sets, dict):  # a mapping: MUSBO and others elsewhere (above)
                continue
            cfg = yaml.safe_load((clone / f"results/paper/{kind}/{name}/{env}/{budget}/seed0.run_config.yaml").read_text())
            assert cfg["algo"] == "musbo" and cfg["env"] == env and cfg["seed"] == 0
            for switch in sets:
                key, value = switch.split("=", 1)
                leaf = cfg
                for part in key.split("."):
                    leaf = leaf[part]
                assert leaf == yaml.safe_load(value), (name, switch)
    hopper = yaml.safe_load((clone / "results/paper/runs/musbo/hopper/500k/seed0.run_config.yaml").read_text())
    assert hopper["deployments"] == config["run"]["envs"]["hopper"]["deployments"]  # run.envs merged in


def test_training_jobs_carry_threads_resources_log_and_benchmark(clone):
    for profile in ("paper", "mini"):
        config = profile_config(profile)["resources"]
        proc = snakemake("--dry-run", "--forceall", "--cores=8", f"results/{profile}/runs/musbo/hopper/500k/seed0/metrics.csv",
                         f"--configfile=config/{profile}.yaml", cwd=clone)
        assert proc.returncode == 0, proc.log
        if config["threads"] > 1:  # Snakemake does not print one thread
            assert re.search(rf"^\s+threads: {config['threads']}$", proc.log, re.M), proc.log
        resources = re.search(r"^\s+resources: (.*)$", proc.log, re.M).group(1).split(", ")
        assert {f"runtime={config['runtime_min']['hopper']}", f"mem_mb={config['mem_mb']}",
                f"gpu={config['gpu']}"} <= set(resources), resources
        assert f"log: logs/{profile}/runs/musbo/hopper/500k/seed0.log" in proc.log
        assert f"benchmark: benchmarks/{profile}/runs/musbo/hopper/500k/seed0.tsv" in proc.log
        assert f"--run-config results/{profile}/runs/musbo/hopper/500k/seed0.run_config.yaml" in proc.log
    assert profile_config("paper")["resources"]["gpu"] == 1
    assert profile_config("mini")["resources"]["gpu"] == profile_config("smoke")["resources"]["gpu"] == 0
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    assert rules.count('"../environment.yml"') == rules.count("shell:"), "every rule needs conda:"


def test_analysis_jobs_are_local_rules():
    # On a cluster they run beside Snakemake (tests/test_slurm.py sees none of them in squeue).
    analysis = (ROOT / "rules/analysis.smk").read_text()
    assert analysis.count("    rule:") == 1  # one rule per target, made in a loop
    assert re.search(r"^\s+localrule: True$", analysis.split("    rule:")[1], re.M)
    runs = (ROOT / "rules/runs.smk").read_text()
    training = runs.split("rule run_config:")[0]
    assert "localrule" not in training


# ------------------------------------------------------------------ profiles
def test_slurm_profiles():
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["rerun-incomplete"] and profile["keep-going"] and profile["retries"] >= 1
    # the GPU request comes from config resources.gpu (the rules' `gpu` resource), not from here
    assert "set-resources" not in profile and "gres" not in str(profile.get("default-resources"))
    partitions = yaml.safe_load((ROOT / profile["slurm-partition-config"]).read_text())["partitions"]
    assert any(p.get("max_gpu", 0) > 0 for p in partitions.values())
    assert any(p.get("max_gpu", 0) == 0 for p in partitions.values())
    # what only the local test cluster needs lives in the test's own profile
    test_profile = yaml.safe_load((ROOT / "tests/slurm_profile/config.yaml").read_text())
    assert test_profile["slurm-status-command"] == "squeue" and "slurm-status-command" not in profile
    assert "slurm-init-seconds-before-status-checks" not in profile
    options = set(re.findall(r"--[\w-]+", snakemake("--help", cwd=ROOT).log))
    assert {f"--{key}" for key in {**profile, **test_profile} if key.startswith("slurm-")} <= options
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert default["keep-going"] and default["rerun-incomplete"] and default["cores"] == "all"


# ------------------------------------------------------------------ Snakemake's own Python
BLOCK_MODULES = '''
import sys
class _Block:
    """Makes the named modules unimportable, as in a Python where they are not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "gymnasium"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _Block())
'''


def test_snakemake_without_the_projects_packages_fails_once_naming_the_fix(clone, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_MODULES)
    env = {"PYTHONPATH": str(tmp_path)}
    proc = snakemake("all", "--dry-run", "--cores=1", "--configfile=config/smoke.yaml", cwd=clone, env=env)
    assert proc.returncode != 0
    assert proc.log.count("cannot import torch, gymnasium") == 1, proc.log
    assert "make setup" in proc.log and "--use-conda" in proc.log
    assert not jobs_of(proc.log)
    # with --use-conda the jobs bring their own environment: the Snakefile loads, and each run's
    # config is resolved by a local job of rule run_config in it, from a request written now
    # (--list-rules: this machine has no conda for a dry run to check)
    proc = snakemake("--list-rules", "--use-conda", "--configfile=config/smoke.yaml", cwd=clone, env=env)
    assert proc.returncode == 0, proc.log
    assert {"run", "run_config"} <= set(proc.stdout.split())
    request = yaml.safe_load((clone / "results/smoke/run_requests/runs/musbo/hopper/500k/seed0.yaml").read_text())
    assert request["profile"] == "smoke" and set(request["run"]["envs"]) == {"hopper"}


# ------------------------------------------------------------------ stand-in runs
STUB_RUN = '''
import argparse, os, pathlib, shutil, sys, yaml
p = argparse.ArgumentParser()
p.add_argument("--run-config", required=True)
p.add_argument("--out", required=True)
p.add_argument("--replace-stale", action="store_true")
p.add_argument("--lock-wait", type=float, required=True)
p.add_argument("--stop-after-min", type=float, required=True)
p.add_argument("--checkpoint-every-min", type=float, required=True)
a = p.parse_args()
text = pathlib.Path(a.run_config).read_text()
cfg = yaml.safe_load(text)
out = pathlib.Path(a.out)
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
checkpoint = out / "checkpoints" / "deployment_1.pt"
# like algos.run: "done" is the last deployment's checkpoint; a run that has it trains nothing
# and only writes its result files again
state = checkpoint.read_text() if checkpoint.exists() else None
with open(out / "attempts.txt", "a") as f:
    f.write({None: "fresh", "state": "resumed", "done": "nothing-to-train"}[state] + "\\n")
resumed = state is not None
checkpoint.write_text(state or "state")
(out / "config.yaml").write_text(text)
which = f"{cfg['algo']}/{cfg['env']}/{cfg['budget']}/seed{cfg['seed']}"
if which == os.environ.get("STUB_FAIL_ONCE") and not resumed:
    sys.exit("stand-in: failing the first attempt after a checkpoint")
if which == os.environ.get("STUB_FAIL_ALWAYS"):
    sys.exit("stand-in: failing every attempt")
if which == os.environ.get("STUB_HANG") and not resumed:
    import time
    time.sleep(600)  # the test kills Snakemake and this job while it "trains"
checkpoint.write_text("done")
for name in ("provenance.json", "eval_returns.csv", "model_eval.csv", "metrics.csv"):
    (out / name).write_text("deployment\\n1\\n")
if which == os.environ.get("STUB_HANG_DONE") and not resumed:
    import time
    time.sleep(600)  # complete, but killed before Snakemake records the job as done
'''

STUB_ANALYSIS = '''
import argparse, pathlib
FILES = %r
p = argparse.ArgumentParser()
p.add_argument("target")
for name in ("--profile", "--config", "--results", "--out"):
    p.add_argument(name, required=True)
a = p.parse_args()
for name in FILES[a.target]:
    (pathlib.Path(a.out) / name).write_text(a.target + " " + a.profile + "\\n")
'''


@pytest.fixture
def stub_workflow(tmp_path):
    """A fresh clone with stand-ins for `python -m algos.run` and `python -m analysis`."""
    repo = fresh_clone(tmp_path / "repo")
    (repo / "algos" / "run.py").write_text(STUB_RUN)
    (repo / "analysis" / "__main__.py").write_text(STUB_ANALYSIS % ANALYSIS_FILES)
    return repo


SMOKE = "--configfile=config/smoke.yaml"


def test_a_failed_run_is_retried_and_resumes_from_its_checkpoints(stub_workflow):
    run = "results/smoke/runs/mopo/ant/500k/seed0"
    proc = snakemake(f"{run}/metrics.csv", "--cores", "1", SMOKE,
                     cwd=stub_workflow, env={"STUB_FAIL_ONCE": "mopo/ant/500k/seed0"})
    assert proc.returncode == 0, proc.log
    assert (stub_workflow / run / "attempts.txt").read_text().split() == ["fresh", "resumed"]
    assert (stub_workflow / "logs/smoke/runs/mopo/ant/500k/seed0.log").is_file()
    assert (stub_workflow / "benchmarks/smoke/runs/mopo/ant/500k/seed0.tsv").is_file()


def test_keep_going_then_an_edit_reruns_exactly_the_runs_it_changes(stub_workflow):
    failing = "mopo/ant/500k/seed0"
    proc = snakemake("all", "--cores", "2", SMOKE, cwd=stub_workflow, env={"STUB_FAIL_ALWAYS": failing})
    assert proc.returncode != 0  # keep-going comes from profiles/default
    runs = stub_workflow / "results/smoke/runs"
    finished = {str(p.parent.relative_to(runs)) for p in runs.glob("*/*/*/*/metrics.csv")}
    assert len(finished) == 29 and failing not in finished
    failed = runs / failing
    assert (failed / "checkpoints/deployment_1.pt").is_file(), "Snakemake deleted the resume state"
    assert not (failed / "metrics.csv").exists()
    figures = stub_workflow / "paper_figures/smoke"
    for done in ("fig2", "fig4", "fig5", "fig6", "table1", "table2", "ablation", "readings"):  # no mopo/ant/500k
        assert all((figures / f).is_file() for f in ANALYSIS_FILES[done]), done
    for blocked in ("fig3", "aggregate", "diagnostics", "claims", "report"):
        assert not any((figures / f).exists() for f in ANALYSIS_FILES[blocked]), blocked
    assert not (stub_workflow / "paper_figures/fig2.pdf").exists()  # the paper profile's file

    # The next invocation redoes only the failed run (resuming) and what reads it.
    proc = snakemake("all", "--cores", "2", SMOKE, cwd=stub_workflow)
    assert proc.returncode == 0, proc.log
    assert counts(jobs_of(proc.log)) == {"run": 1, "fig3": 1, "aggregate": 1, "diagnostics": 1, "claims": 1,
                                         "report": 1, "all": 1}
    assert "resumed" in (failed / "attempts.txt").read_text()
    assert counts(dry_run("all", SMOKE, cwd=stub_workflow, force=False)) == {}, "not up to date"

    # One value of the profile file: exactly the runs it changes are redone.
    smoke = stub_workflow / "config/smoke.yaml"
    text = smoke.read_text()
    edited = text.replace("hopper: {deployments: 3,", "hopper: {deployments: 4,")
    assert edited != text
    smoke.write_text(edited)
    jobs = dry_run("all", SMOKE, cwd=stub_workflow, force=False)
    redone = {(w["algo"], w["env"], w["budget"]) for rule, w in jobs if rule == "run"}
    assert redone == {(a, "hopper", b) for a in ALGOS for b in ("500k", "250k")}
    # ... and the reading runs on Hopper (smoke's batch_full), no other training job
    assert {(rule, w["env"]) for rule, w in jobs if rule in TRAINING_RULES} == {("run", "hopper"),
                                                                                ("reading_run", "hopper")}
    # (every analysis job is redone: the merged config it draws for changed)
    # an ablation's switch: that ablation's runs only
    config = profile_config("smoke")
    ablation = config["ablations"][0]
    smoke.write_text(edited + f"ablation_switches: {{{ablation}: [musbo.alpha=0.5]}}\n")
    jobs = dry_run("all", SMOKE, cwd=stub_workflow, force=False)
    assert {(rule, w.get("ablation")) for rule, w in jobs if rule in TRAINING_RULES} == (
        {("run", None), ("reading_run", None)} | {("ablation_run", ablation)})
    # and a --configfile on top: its run section reaches the runs
    (stub_workflow / "extra.yaml").write_text("run: {envs: {halfcheetah: {trpo: {delta: 0.02}}}}\n")
    proc = snakemake("all", "--cores", "2", "--configfile", "config/smoke.yaml", "extra.yaml", cwd=stub_workflow)
    assert proc.returncode == 0, proc.log
    seen = yaml.safe_load((runs / "musbo/halfcheetah/500k/seed0/config.yaml").read_text())
    assert seen["trpo"]["delta"] == 0.02
    seen = yaml.safe_load((stub_workflow / f"results/smoke/ablations/{ablation}/halfcheetah/500k/seed0/config.yaml").read_text())
    assert seen["musbo"]["alpha"] == 0.5 and seen["trpo"]["delta"] == 0.02


def test_killing_snakemake_and_a_job_then_rerunning_completes_without_redoing_finished_runs(stub_workflow):
    hanging, done_unrecorded = "bremen/hopper/250k/seed0", "musbo/ant/250k/seed0"
    cmd = [sys.executable, "-m", "snakemake", "all", "--cores", "2", SMOKE]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.Popen(cmd, cwd=stub_workflow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PATH": path, "STUB_HANG": hanging, "STUB_HANG_DONE": done_unrecorded},
                            start_new_session=True)
    runs = stub_workflow / "results/smoke/runs"
    deadline = time.time() + 240
    while not ((runs / hanging / "checkpoints/deployment_1.pt").exists()
               and (runs / done_unrecorded / "metrics.csv").exists()) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every job it started, mid-flight
    proc.wait()
    finished_before = {p.parent for p in runs.glob("*/*/*/*/metrics.csv")}
    assert 0 < len(finished_before) < 30 and not (runs / hanging / "metrics.csv").exists()
    snakemake("--unlock", SMOKE, cwd=stub_workflow)
    proc = snakemake("all", "--cores", "2", SMOKE, cwd=stub_workflow)
    assert proc.returncode == 0, proc.log
    rerun = {(w["algo"], w["env"], w["budget"], w["seed"]) for rule, w in jobs_of(proc.log) if rule == "run"}
    rescheduled = {runs / a / e / b / f"seed{sd}" for a, e, b, sd in rerun} & finished_before
    # A job that wrote metrics.csv just before the kill, before Snakemake recorded it as done, is
    # incomplete to Snakemake and runs again (only the one job running beside the hanging one);
    # it must find its last checkpoint and train nothing.
    assert rescheduled == {runs / done_unrecorded}, f"finished runs scheduled again: {rescheduled}"
    for run in finished_before:
        attempts = (run / "attempts.txt").read_text().split()
        assert attempts in (["fresh"], ["fresh", "nothing-to-train"]), f"{run} trained again: {attempts}"
    assert len(list(runs.glob("*/*/*/*/metrics.csv"))) == 30
    assert (runs / hanging / "attempts.txt").read_text().split() == ["fresh", "resumed"]


# ------------------------------------------------------------------ two workflows, one results tree
STUB_LOCKED_RUN = '''
"""The real run CLI (algos/real_run.py here: identity, run.lock, --lock-wait) around a stand-in
deployment loop that the test steers with files named in environment variables."""
import os, sys, time
from pathlib import Path
import yaml
import algos.real_run as real
from algos.rundir import atomic_write_bytes


def wait_for(variable):
    while os.environ.get(variable) and not Path(os.environ[variable]).exists():
        time.sleep(0.05)


def deployment_loop(cfg, out, *args, **kwargs):
    done = out / "checkpoints" / "done"  # as the last deployment's checkpoint: a rerun trains nothing
    with open(out / "attempts.txt", "a") as f:
        f.write(("nothing-to-train" if done.exists() else "trained") + "\\n")
    if not done.exists():
        wait_for("STUB_BEFORE_CONFIG")
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg).encode())
    if not done.exists():
        wait_for("STUB_TRAIN_UNTIL")
        done.parent.mkdir(exist_ok=True)
        done.touch()
    for name in ("provenance.json", "eval_returns.csv", "model_eval.csv", "metrics.csv"):
        atomic_write_bytes(out / name, b"deployment\\n1\\n")


real.deployment_loop = deployment_loop
if os.environ.get("STUB_JOB_STARTED"):
    Path(os.environ["STUB_JOB_STARTED"]).touch()
wait_for("STUB_JOB_AFTER")
sys.exit(real.main())
'''
SHARED_RUN = "results/smoke/runs/musbo/hopper/250k/seed0"


@pytest.fixture
def two_checkouts(tmp_path):
    """Two clones whose results/smoke is one directory (a symlink in each), each job the real run
    CLI around a stand-in loop (STUB_LOCKED_RUN)."""
    first = fresh_clone(tmp_path / "first")
    second = tmp_path / "second"
    git("clone", "-q", str(first), str(second), cwd=tmp_path)
    (tmp_path / "shared").mkdir()
    for repo in (first, second):
        (repo / "algos" / "real_run.py").write_text((repo / "algos" / "run.py").read_text())
        (repo / "algos" / "run.py").write_text(STUB_LOCKED_RUN)
        (repo / "results" / "smoke").symlink_to(tmp_path / "shared")
    yield first, second, tmp_path / "shared" / SHARED_RUN.split("results/smoke/")[1]


def start_workflow(repo: Path, env: dict, resources: str = "{retries: 0}") -> subprocess.Popen:
    """The issue's command, `snakemake --cores 1 <run>/metrics.csv` on the smoke profile, in the background."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.Popen([sys.executable, "-m", "snakemake", f"{SHARED_RUN}/metrics.csv", "--cores", "1", SMOKE,
                             "--config", f"resources={resources}"], cwd=repo, stdout=open(repo / "snakemake.out", "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PATH": path, **env}, start_new_session=True)


def wait_until(condition, what: str, procs, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"never saw {what}")
        time.sleep(0.1)


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_two_workflows_on_one_results_tree_keep_the_finished_run(two_checkouts, tmp_path):
    first, second, run = two_checkouts
    release = tmp_path / "release"
    a = start_workflow(first, {"STUB_TRAIN_UNTIL": str(release)})
    wait_until(lambda: (run / "config.yaml").exists(), "the first workflow's run training", [a])
    b = start_workflow(second, {})
    job_log = second / "logs/smoke/runs/musbo/hopper/250k/seed0.log"
    wait_until(lambda: job_log.exists() and "waiting up to" in job_log.read_text(),
               "the second workflow's job waiting for the lock", [a, b])
    release.touch()                                          # the first run finishes; the second job takes over
    assert finish(a) == 0, (first / "snakemake.out").read_text()
    assert finish(b) == 0, (second / "snakemake.out").read_text()
    assert all((run / name).is_file() for name in RUN_FILES)
    assert (run / "attempts.txt").read_text().split() == ["trained", "nothing-to-train"]
    assert len(job_log.read_text().splitlines()) == 1        # one line while it waited


def test_a_job_refused_by_another_workflows_lock_leaves_its_run_untouched(two_checkouts, tmp_path):
    # The issue's race: the second job starts before the live run writes config.yaml and is refused
    # after it (no wait: runtime_min 0); its Snakemake then deleted that config.yaml, and the first
    # Snakemake, missing it, deleted the finished results.
    first, second, run = two_checkouts
    second_job, release = tmp_path / "second_job_started", tmp_path / "release"
    a = start_workflow(first, {"STUB_BEFORE_CONFIG": str(second_job), "STUB_TRAIN_UNTIL": str(release)})
    wait_until(lambda: (run / "attempts.txt").exists(), "the first workflow's run holding its lock", [a])
    b = start_workflow(second, {"STUB_JOB_STARTED": str(second_job), "STUB_JOB_AFTER": str(run / "config.yaml")},
                       resources="{retries: 0, runtime_min: {hopper: 0}}")
    assert finish(b) == 1
    error = (second / "logs/smoke/runs/musbo/hopper/250k/seed0.log").read_text()
    assert error.startswith("error: ") and "is in use by another run (pid" in error and len(error.splitlines()) == 1
    assert (run / "config.yaml").is_file(), "the refused job's Snakemake deleted the live run's file"
    release.touch()
    assert finish(a) == 0, (first / "snakemake.out").read_text()
    assert all((run / name).is_file() for name in RUN_FILES)
    assert (run / "attempts.txt").read_text().split() == ["trained"]


# ------------------------------------------------------------------ the real thing
def test_an_edited_profile_reruns_its_runs_for_real_keeping_the_old_ones_aside(tmp_path):
    repo = fresh_clone(tmp_path / "repo")
    targets = [f"results/smoke/runs/musbo/{env}/250k/seed0/metrics.csv" for env in ("hopper", "halfcheetah")]
    proc = snakemake(*targets, "--cores", "2", SMOKE, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.log[-20000:]
    hopper, cheetah = (repo / targets[0]).parent, (repo / targets[1]).parent
    before = (hopper / "metrics.csv").read_text()
    smoke = repo / "config/smoke.yaml"
    smoke.write_text(smoke.read_text().replace("hopper: {deployments: 3,", "hopper: {deployments: 2,"))
    proc = snakemake(*targets, "--cores", "2", SMOKE, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.log[-20000:]
    assert [(rule, w["env"]) for rule, w in jobs_of(proc.log)] == [("run", "hopper")]
    stale = list(hopper.glob("stale-*"))
    assert len(stale) == 1 and (stale[0] / "metrics.csv").read_text() == before, "the old run was not kept"
    assert yaml.safe_load((stale[0] / "config.yaml").read_text())["deployments"] == 3
    assert yaml.safe_load((hopper / "config.yaml").read_text())["deployments"] == 2
    assert len((hopper / "metrics.csv").read_text().strip().splitlines()) == 1 + 2  # header + deployments 1, 2
    assert not list(cheetah.glob("stale-*"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_smoke_workflow_produces_every_figure_table_and_the_report(tmp_path):
    repo = fresh_clone(tmp_path / "repo")
    proc = snakemake("all", "--cores", "2", SMOKE, cwd=repo, timeout=1700)
    assert proc.returncode == 0, proc.log[-20000:]
    figures = repo / "paper_figures" / "smoke"
    for files in ANALYSIS_FILES.values():
        for name in files:
            assert (figures / name).stat().st_size > 0, name
    config = profile_config("smoke")
    for algo in config["algos"]:
        for env in config["envs"]:
            for budget in config["budgets"]:
                for seed in config["seeds"]:
                    run = repo / f"results/smoke/runs/{algo}/{env}/{budget}/seed{seed}"
                    assert all((run / f).is_file() for f in RUN_FILES), run
    proc = snakemake("--report", "report.html", SMOKE, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.log[-20000:]
    html = (repo / "report.html").read_text()
    for files in ANALYSIS_FILES.values():
        for name in files:
            assert name in html, name
    assert "smoke" in html and "seeds 0" in html
