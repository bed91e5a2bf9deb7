"""The Snakemake workflow (Snakefile, rules/, config/schema.yaml, profiles/).

Pinned here: `snakemake --lint` is clean; a bad config is refused naming the bad key; the dry
runs list the paper's 150 training runs plus the ablation and analysis jobs, and a figure or
table asked for alone lists only the runs it reads; with a stand-in for the run CLI, a failed
run is retried and resumes from its checkpoints, and --keep-going lets the other runs and
figures finish. Marked `slow`: the whole smoke workflow, for real, produces every figure and
table (a few minutes on 2 cores; `pytest -m "not slow"` leaves it out).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ("Snakefile", "rules", "config", "profiles", "environment.yml")
CODE = ("algos", "envs", "analysis")
ENVS = ["walker2d", "hopper", "halfcheetah", "ant", "cheetah-run"]
ANALYSIS_FILES = {
    "fig2": ["fig2.pdf"], "fig3": ["fig3.pdf"], "fig4": ["fig4.pdf"], "fig5": ["fig5.pdf"],
    "fig6": ["fig6.pdf"],
    "table1": ["table1_novelty.csv", "table1_novelty.md", "table1_novelty.tex"],
    "table2": ["table2_hyperparameters.csv", "table2_hyperparameters.md", "table2_hyperparameters.tex"],
    "aggregate": ["aggregate.pdf"], "ablation": ["ablation.pdf"], "claims": ["claims.md"],
    "report": ["report.md"],
}
RUN_FILES = ["metrics.csv", "eval_returns.csv", "model_eval.csv", "config.yaml", "provenance.json"]


def snakemake(*args: str, cwd: Path = ROOT, timeout: float = 300, env: dict | None = None):
    """Runs `python -m snakemake ARGS` with this interpreter's bin/ first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PATH": path, **(env or {})})
    proc.log = proc.stdout + proc.stderr
    return proc


def dry_run(*args: str, cwd: Path = ROOT):
    """A forced dry run (-F: independent of results already on disk); returns the jobs."""
    proc = snakemake(*args, "--dry-run", "--forceall", cwd=cwd)
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


def copy_workflow(dest: Path, with_code: bool = True) -> Path:
    """A copy of the workflow (and the code it runs) in which a test may write results."""
    for name in WORKFLOW + (CODE if with_code else ()):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


# ------------------------------------------------------------------ static checks
def test_lint_is_clean():
    proc = snakemake("--lint")
    assert proc.returncode == 0 and "Congratulations" in proc.log, proc.log


@pytest.mark.parametrize("bad, named", [
    ("envs: [walker2d, hoper]", "instance['envs'][1]"),
    ("algos: [musbo, sac]", "instance['algos'][1]"),
    ("budgets: [100k]", "instance['budgets'][0]"),
    ("seed: [0]", "'seed' was unexpected"),
    ("resources: {gpus: 1}", "'gpus' was unexpected"),
    ("ablations: [no_such_switch]", "no_such_switch"),
])
def test_a_bad_config_is_refused_naming_the_key(tmp_path, bad, named):
    (tmp_path / "bad.yaml").write_text(bad + "\n")
    proc = snakemake("--dry-run", f"--configfile={tmp_path / 'bad.yaml'}")
    assert proc.returncode != 0
    assert named in proc.log, proc.log


def test_every_wildcard_is_constrained():
    # A value outside the config's lists matches no rule, instead of starting a run.
    for target in ["results/paper/runs/sac/hopper/100k/seedX/metrics.csv",
                   "results/paper/ablations/no_such/hopper/500k/seed0/metrics.csv"]:
        proc = snakemake("--dry-run", target)
        assert proc.returncode != 0 and "MissingRuleException" in proc.log, (target, proc.log)
    text = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))])
    used = set(re.findall(r"\{\{(\w+)\}\}", text))
    constrained = set(re.findall(r"^\s+(\w+)=", text.split("wildcard_constraints:")[1].split("\n\n")[0], re.M))
    assert used and used <= constrained, (used, constrained)


# ------------------------------------------------------------------ dry runs
def test_paper_dry_run_lists_150_training_runs_plus_ablations_and_analysis():
    config = profile_config("paper")
    jobs = dry_run("all")
    runs = [w for rule, w in jobs if rule == "run"]
    assert len(runs) == 150 == 3 * 5 * 2 * 5
    assert {(w["algo"], w["env"], w["budget"], w["seed"]) for w in runs} == {
        (a, e, b, str(s)) for a in ["musbo", "bremen", "mopo"] for e in ENVS for b in ["500k", "250k"]
        for s in range(5)}
    expected = {"run": 150, "ablation_run": len(config["ablations"]) * len(config["ablation_seeds"]),
                "all": 1, **{target: 1 for target in ANALYSIS_FILES}}
    assert counts(jobs) == expected


@pytest.mark.parametrize("profile, runs", [("mini", 60), ("smoke", 30)])
def test_mini_and_smoke_grids(profile, runs):
    config = profile_config(profile)
    jobs = dry_run("all", f"--configfile=config/{profile}.yaml")
    assert counts(jobs)["run"] == runs == 3 * 5 * 2 * len(config["seeds"])
    assert counts(jobs)["ablation_run"] == len(config["ablations"]) * len(config["ablation_seeds"])


def test_fig2_alone_runs_only_walker2d_and_hopper_at_500k():
    jobs = dry_run("paper_figures/fig2.pdf")
    assert counts(jobs) == {"run": 30, "fig2": 1}
    assert {w["env"] for rule, w in jobs if rule == "run"} == {"walker2d", "hopper"}
    assert {w["budget"] for rule, w in jobs if rule == "run"} == {"500k"}


@pytest.mark.parametrize("target, envs, budget", [
    ("paper_figures/fig3.pdf", {"ant", "cheetah-run", "halfcheetah"}, "500k"),
    ("paper_figures/fig4.pdf", {"walker2d", "hopper"}, "250k"),
    ("paper_figures/fig5.pdf", {"ant", "cheetah-run", "halfcheetah"}, "250k"),
])
def test_each_learning_curve_figure_alone(target, envs, budget):
    jobs = dry_run(target)
    runs = [w for rule, w in jobs if rule == "run"]
    assert {w["env"] for w in runs} == envs and {w["budget"] for w in runs} == {budget}
    assert len(runs) == 3 * len(envs) * 5


def test_fig6_and_table1_use_their_env_and_the_ablation_seeds():
    config = profile_config("paper")
    seeds = {str(s) for s in config["ablation_seeds"]}
    fig6 = [w for rule, w in dry_run("paper_figures/fig6.pdf") if rule == "run"]
    assert {(w["algo"], w["env"], w["budget"]) for w in fig6} == {
        ("musbo", config["model_eval_env"], "500k"), ("bremen", config["model_eval_env"], "500k")}
    assert {w["seed"] for w in fig6} == seeds and len(fig6) == 2 * len(seeds)
    table1 = dry_run("paper_figures/table1_novelty.csv")
    assert counts(table1) == {"run": 3 * len(seeds), "table1": 1}
    assert {(w["env"], w["budget"]) for rule, w in table1 if rule == "run"} == {(config["novelty_env"], "500k")}


def test_table2_alone_needs_no_run_and_ablation_needs_musbo_and_its_ablations():
    assert counts(dry_run("table2")) == {"table2": 1}
    config = profile_config("paper")
    jobs = dry_run("paper_figures/ablation.pdf")
    seeds = len(config["ablation_seeds"])
    assert counts(jobs) == {"run": seeds, "ablation_run": len(config["ablations"]) * seeds, "ablation": 1}
    assert {(w["algo"], w["env"], w["budget"]) for rule, w in jobs if rule == "run"} == {
        ("musbo", config["ablation_env"], config["ablation_budget"])}


def test_training_jobs_carry_threads_resources_log_and_benchmark():
    config = profile_config("paper")["resources"]
    proc = snakemake("--dry-run", "--forceall", "--cores=8", "results/paper/runs/musbo/hopper/500k/seed0/metrics.csv")
    assert proc.returncode == 0, proc.log
    assert re.search(rf"^\s+threads: {config['threads']}$", proc.log, re.M), proc.log
    resources = re.search(r"^\s+resources: (.*)$", proc.log, re.M).group(1).split(", ")
    assert {f"runtime={config['runtime_min']['hopper']}", f"mem_mb={config['mem_mb']}",
            f"gpu={config['gpu']}"} <= set(resources), resources
    assert "log: logs/paper/runs/musbo/hopper/500k/seed0.log" in proc.log
    assert "benchmark: benchmarks/paper/runs/musbo/hopper/500k/seed0.tsv" in proc.log
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    assert rules.count('"../environment.yml"') == rules.count("shell:"), "every rule needs conda:"
    assert (ROOT / "rules" / "../environment.yml").resolve().is_file()  # relative to rules/*.smk


def test_slurm_profile_tracks_jobs_with_squeue_and_asks_a_gpu_per_training_job():
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    # squeue, not sacct: without accounting, sacct fails and the executor waits forever
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert profile["rerun-incomplete"] and profile["keep-going"] and profile["retries"] >= 1
    for rule in ("run", "ablation_run"):
        assert profile["set-resources"][rule]["gres"].startswith("gpu:")
        assert profile["set-resources"][rule]["slurm_partition"]
    options = set(re.findall(r"--[\w-]+", snakemake("--help").log))
    assert {f"--{key}" for key in profile if key.startswith("slurm-")} <= options  # the plugin's names


# ------------------------------------------------------------------ stand-in runs
STUB_RUN = '''
import argparse, os, pathlib, sys
p = argparse.ArgumentParser()
for name in ("--algo", "--env", "--budget", "--seed", "--profile", "--out"):
    p.add_argument(name, required=True)
p.add_argument("--set", dest="overrides", action="append", default=[])
a = p.parse_args()
out = pathlib.Path(a.out)
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
checkpoint = out / "checkpoints" / "deployment_1.pt"
with open(out / "attempts.txt", "a") as f:
    f.write(("resumed" if checkpoint.exists() else "fresh") + "\\n")
resumed = checkpoint.exists()
checkpoint.write_text("state")
(out / "config.yaml").write_text("overrides: %r\\n" % a.overrides)
which = f"{a.algo}/{a.env}/{a.budget}/seed{a.seed}"
if which == os.environ.get("STUB_FAIL_ONCE") and not resumed:
    sys.exit("stand-in: failing the first attempt after a checkpoint")
if which == os.environ.get("STUB_FAIL_ALWAYS"):
    sys.exit("stand-in: failing every attempt")
if which == os.environ.get("STUB_HANG") and not resumed:
    import time
    time.sleep(600)  # the test kills Snakemake and this job while it "trains"
for name in ("provenance.json", "eval_returns.csv", "model_eval.csv", "metrics.csv"):
    (out / name).write_text("deployment\\n1\\n")
'''

STUB_ANALYSIS = '''
import argparse, pathlib
FILES = %r
p = argparse.ArgumentParser()
p.add_argument("target")
for name in ("--profile", "--results", "--out"):
    p.add_argument(name, required=True)
a = p.parse_args()
for name in FILES[a.target]:
    (pathlib.Path(a.out) / name).write_text(a.target + " " + a.profile + "\\n")
'''


@pytest.fixture
def stub_workflow(tmp_path):
    """The real workflow, with stand-ins for `python -m algos.run` and `python -m analysis`."""
    copy_workflow(tmp_path, with_code=False)
    for package, main in (("algos", ("run.py", STUB_RUN)), ("analysis", ("__main__.py", STUB_ANALYSIS % ANALYSIS_FILES))):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / main[0]).write_text(main[1])
    return tmp_path


def test_a_failed_run_is_retried_and_resumes_from_its_checkpoints(stub_workflow):
    run = "results/smoke/runs/mopo/ant/500k/seed0"
    proc = snakemake(f"{run}/metrics.csv", "--cores", "1", "--configfile=config/smoke.yaml",
                     cwd=stub_workflow, env={"STUB_FAIL_ONCE": "mopo/ant/500k/seed0"})
    assert proc.returncode == 0, proc.log
    assert (stub_workflow / run / "attempts.txt").read_text().split() == ["fresh", "resumed"]
    assert (stub_workflow / "logs/smoke/runs/mopo/ant/500k/seed0.log").is_file()
    assert (stub_workflow / "benchmarks/smoke/runs/mopo/ant/500k/seed0.tsv").is_file()


def test_keep_going_finishes_the_other_runs_and_keeps_the_failed_runs_checkpoints(stub_workflow):
    failing = "mopo/ant/500k/seed0"
    proc = snakemake("all", "--cores", "2", "--keep-going", "--configfile=config/smoke.yaml",
                     cwd=stub_workflow, env={"STUB_FAIL_ALWAYS": failing})
    assert proc.returncode != 0
    runs = stub_workflow / "results/smoke/runs"
    finished = {str(p.parent.relative_to(runs)) for p in runs.glob("*/*/*/*/metrics.csv")}
    assert len(finished) == 29 and f"{failing}" not in finished
    failed = runs / failing
    assert (failed / "checkpoints/deployment_1.pt").is_file(), "Snakemake deleted the resume state"
    assert not (failed / "metrics.csv").exists()
    figures = stub_workflow / "paper_figures"
    for done in ("fig2", "fig4", "fig5", "fig6", "table1", "table2", "ablation"):  # do not read mopo/ant/500k
        assert all((figures / f).is_file() for f in ANALYSIS_FILES[done]), done
    for blocked in ("fig3", "aggregate", "claims", "report"):
        assert not any((figures / f).exists() for f in ANALYSIS_FILES[blocked]), blocked
    # the ablation runs got their switches from config ablation_switches
    switches = profile_config("smoke")["ablation_switches"]
    for ablation, sets in switches.items():
        seen = yaml.safe_load((stub_workflow / f"results/smoke/ablations/{ablation}/halfcheetah/500k/seed0/config.yaml").read_text())
        assert seen["overrides"] == sets

    # The next invocation redoes only the failed run (resuming) and what reads it.
    proc = snakemake("all", "--cores", "2", "--configfile=config/smoke.yaml", cwd=stub_workflow)
    assert proc.returncode == 0, proc.log
    assert counts(jobs_of(proc.log)) == {"run": 1, "fig3": 1, "aggregate": 1, "claims": 1, "report": 1, "all": 1}
    assert "resumed" in (failed / "attempts.txt").read_text()


def test_killing_snakemake_and_a_job_then_rerunning_completes_without_redoing_finished_runs(stub_workflow):
    import os
    import signal
    import subprocess
    import time
    hanging = "bremen/hopper/250k/seed0"
    cmd = [str(Path(sys.executable).parent / "snakemake"), "all", "--cores", "2", "--configfile=config/smoke.yaml"]
    proc = subprocess.Popen(cmd, cwd=stub_workflow, env={**os.environ, "STUB_HANG": hanging},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = stub_workflow / "results/smoke/runs"
    deadline = time.time() + 240
    while not (runs / hanging / "checkpoints/deployment_1.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every job it started, mid-flight
    proc.wait()
    finished_before = {p.parent for p in runs.glob("*/*/*/*/metrics.csv")}
    assert 0 < len(finished_before) < 30 and not (runs / hanging / "metrics.csv").exists()
    snakemake("--unlock", "--configfile=config/smoke.yaml", cwd=stub_workflow)
    proc = snakemake("all", "--cores", "2", "--rerun-incomplete", "--configfile=config/smoke.yaml", cwd=stub_workflow)
    assert proc.returncode == 0, proc.log
    rerun = {(w["algo"], w["env"], w["budget"], w["seed"]) for rule, w in jobs_of(proc.log) if rule == "run"}
    redone = {runs / a / e / b / f"seed{sd}" for a, e, b, sd in rerun} & finished_before
    assert not redone, f"finished runs were run again: {redone}"
    assert len(list(runs.glob("*/*/*/*/metrics.csv"))) == 30
    assert (runs / hanging / "attempts.txt").read_text().split() == ["fresh", "resumed"]


# ------------------------------------------------------------------ the real thing
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_smoke_workflow_produces_every_figure_and_table(tmp_path):
    copy_workflow(tmp_path)
    proc = snakemake("all", "--profile", "profiles/local", "--cores", "2", "--configfile=config/smoke.yaml",
                     cwd=tmp_path, timeout=1700)
    assert proc.returncode == 0, proc.log[-20000:]
    for files in ANALYSIS_FILES.values():
        for name in files:
            assert (tmp_path / "paper_figures" / name).stat().st_size > 0, name
    config = profile_config("smoke")
    for algo in config["algos"]:
        for env in config["envs"]:
            for budget in config["budgets"]:
                for seed in config["seeds"]:
                    run = tmp_path / f"results/smoke/runs/{algo}/{env}/{budget}/seed{seed}"
                    assert all((run / f).is_file() for f in RUN_FILES), run
