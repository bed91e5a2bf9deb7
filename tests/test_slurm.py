"""The workflow on a real (local, single-node) SLURM cluster, through profiles/slurm unchanged.

scripts/slurm_cluster.sh starts slurmctld and slurmd on localhost (Debian's slurm-wlm and
munge, no accounting; .ci/run starts it before the tests, and this module starts it itself
when it is not running and stops it afterwards). The workflow then runs with the
snakemake-executor-plugin-slurm: every training job goes to the `gpu` partition with one
(fake) GPU, every analysis job to the default partition, and job status comes from squeue.

Skipped, with the reason in pytest's summary, only where SLURM cannot run at all: not root,
or SLURM missing and no apt-get to install it. A cluster that should start but does not is a
failure. Snakemake always runs under `timeout -k`: if the executor lost track of its jobs it
would wait forever, ignoring SIGTERM.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_workflow import ANALYSIS_FILES, RUN_FILES, copy_workflow, jobs_of, profile_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
SLURM_DIR = Path(os.environ.get("MUSBO_SLURM_DIR", "/tmp/musbo-slurm"))
# The whole smoke workflow: 33 training jobs and 11 analysis jobs; about 6 minutes here.
TARGET = "all"
LIMIT_S = 1500  # then `timeout` stops Snakemake (TERM, and KILL 30 s later)


def cluster_script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=600)


def why_slurm_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (apt-get install, slurmd runs as root)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install slurm-wlm and munge"
    if not shutil.which("timeout"):
        return "no `timeout` command to bound the SLURM run"
    return None


@pytest.fixture(scope="module")
def slurm_env():
    """The client environment of the running local cluster (started here if needed)."""
    started_here = False
    if cluster_script("status").returncode != 0:
        reason = why_slurm_cannot_run()
        if reason:
            print(f"SKIPPED test_slurm: {reason}", file=sys.stderr)
            pytest.skip(reason)
        proc = cluster_script("start")
        if proc.returncode != 0:
            pytest.fail(f"scripts/slurm_cluster.sh start failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
        started_here = True
    path = os.pathsep.join([str(SLURM_DIR / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    yield {**os.environ, "PATH": path, "SLURM_CONF": str(SLURM_DIR / "etc" / "slurm.conf")}
    if started_here:
        cluster_script("stop")


def slurm_jobs(env: dict, run_id: str) -> list[dict]:
    """The cluster's record of one Snakemake invocation's jobs (kept for MinJobAge)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", f"--name={run_id}", "--format=%i|%T|%P|%b|%k"],
                         capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    keys = ("id", "state", "partition", "gres", "comment")
    return [dict(zip(keys, line.split("|", 4))) for line in out.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(LIMIT_S + 120)
def test_the_smoke_workflow_runs_through_slurm(slurm_env, tmp_path):
    copy_workflow(tmp_path)
    command = ["timeout", "-k", "30", str(LIMIT_S), sys.executable, "-m", "snakemake", TARGET,
               "--profile", "profiles/slurm", "--configfile=config/smoke.yaml",
               "--slurm-init-seconds-before-status-checks=2", "--jobs=4"]
    proc = subprocess.run(command, cwd=tmp_path, env=slurm_env, capture_output=True, text=True,
                          timeout=LIMIT_S + 60)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 124, f"Snakemake did not finish within {LIMIT_S}s:\n{log[-20000:]}"
    assert proc.returncode == 0, log[-20000:]

    # every figure and table, and every run's files
    for files in ANALYSIS_FILES.values():
        for name in files:
            assert (tmp_path / "paper_figures" / name).stat().st_size > 0, name
    config = profile_config("smoke")
    runs = [tmp_path / f"results/smoke/runs/{a}/{e}/{b}/seed{s}" for a in config["algos"] for e in config["envs"]
            for b in config["budgets"] for s in config["seeds"]]
    runs += [tmp_path / f"results/smoke/ablations/{x}/{config['ablation_env']}/{config['ablation_budget']}/seed{s}"
             for x in config["ablations"] for s in config["ablation_seeds"]]
    for run in runs:
        assert all((run / f).is_file() for f in RUN_FILES), run

    # each job went through SLURM: training jobs on the GPU partition with a GPU, the rest on
    # the default partition, all completed
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = slurm_jobs(slurm_env, run_id)
    submitted = [rule for rule, _ in jobs_of(log) if rule != "all"]
    assert len(jobs) == len(submitted) == len(runs) + len(ANALYSIS_FILES), (len(jobs), len(submitted))
    assert all(job["state"] == "COMPLETED" for job in jobs), jobs
    training = [job for job in jobs if re.match(r"rule_(run|ablation_run)_", job["comment"])]
    assert len(training) == len(runs)
    assert all(job["partition"] == "gpu" and "gpu" in job["gres"] for job in training), training
    assert all(job["partition"] == "cpu" for job in jobs if job not in training), jobs
