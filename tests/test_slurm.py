"""The workflow on a real (local, single-node) SLURM cluster, through profiles/slurm unchanged
(`--profile profiles/slurm`), with tests/slurm_profile as the workflow profile: what only this
cluster needs (squeue for job status, short waits), and profiles/default's local settings kept out.

scripts/slurm_cluster.sh starts slurmctld and slurmd on localhost (Debian's slurm-wlm and
munge, no accounting; .ci/run starts it before the tests, and this module starts it itself
when it is not running and stops it afterwards). The workflow then runs with the
snakemake-executor-plugin-slurm: with tests/slurm_profile/gpu.yaml (resources.gpu: 1 over the
smoke profile) every training job asks SLURM for one (fake) GPU and goes to the `gpu` partition
(profiles/slurm/partitions.yaml), analysis jobs are local rules, and job status comes from squeue.

Skipped, with the reason in pytest's summary, only where SLURM cannot run at all: not root,
or SLURM missing and apt-get absent or unable to install it. A cluster that is installed but
does not come up is a failure. Snakemake always runs under `timeout -k`: had the executor
lost track of its jobs, it would wait forever, ignoring SIGTERM.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_workflow import ANALYSIS_FILES, RUN_FILES, fresh_clone, jobs_of

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
SLURM_DIR = Path(os.environ.get("MUSBO_SLURM_DIR", "/tmp/musbo-slurm"))
# A subset of the smoke workflow, with both training rules and analysis jobs on both partitions:
# Fig. 6 and the ablation figure need musbo and bremen on cheetah-run, musbo and its three
# ablations on halfcheetah (6 training jobs), plus Table 2 (config only). Why not `all`: what
# is SLURM-specific (submission, partitions and GPUs, job status through squeue, the job
# step's srun, outputs back on the shared filesystem) does not depend on the rule, the whole
# smoke workflow is already run for real by test_workflow.py, and through SLURM it takes
# about 9 minutes on this (shared) 2-core machine against about 1 for the subset.
# MUSBO_SLURM_TARGET=all runs the whole smoke workflow here too.
TARGETS = os.environ.get("MUSBO_SLURM_TARGET", "paper_figures/smoke/fig6.pdf paper_figures/smoke/ablation.pdf table2").split()
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
        if proc.returncode in (2, 3):  # not root; apt-get could not install (e.g. no network)
            reason = f"the local SLURM cluster cannot run here: {proc.stderr.strip().splitlines()[-1]}"
            print(f"SKIPPED test_slurm: {reason}", file=sys.stderr)
            pytest.skip(reason)
        if proc.returncode != 0:
            pytest.fail(f"scripts/slurm_cluster.sh start failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
        started_here = True
    path = os.pathsep.join([str(SLURM_DIR / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    yield {**os.environ, "PATH": path, "SLURM_CONF": str(SLURM_DIR / "etc" / "slurm.conf")}
    if started_here:
        cluster_script("stop")


def slurm_jobs(env: dict, run_id: str) -> list[dict]:
    """The cluster's record of one Snakemake invocation's jobs (kept for MinJobAge)."""
    # "gres": the job's GPU request, per job (sbatch --gpus) or per node (--gres)
    fields = "JobID:|,State:|,Partition:|,tres-per-job:|,tres-per-node:|,Comment:"
    out = subprocess.run(["squeue", "--states=all", "--noheader", f"--name={run_id}", f"--Format={fields}"],
                         capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    jobs = []
    for line in out.splitlines():
        if line.strip():
            job_id, state, partition, per_job, per_node, comment = (v.strip() for v in line.split("|", 5))
            jobs.append({"id": job_id, "state": state, "partition": partition, "gres": f"{per_job} {per_node}",
                         "comment": comment})
    return jobs


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(LIMIT_S + 120)
def test_the_smoke_workflow_runs_through_slurm(slurm_env, tmp_path):
    tmp_path = fresh_clone(tmp_path / "repo")
    command = ["timeout", "-k", "30", str(LIMIT_S), sys.executable, "-m", "snakemake", *TARGETS,
               "--profile", "profiles/slurm", "--workflow-profile", "tests/slurm_profile",
               "--configfile", "config/smoke.yaml", "tests/slurm_profile/gpu.yaml"]
    proc = subprocess.run(command, cwd=tmp_path, env=slurm_env, capture_output=True, text=True,
                          timeout=LIMIT_S + 60)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 124, f"Snakemake did not finish within {LIMIT_S}s:\n{log[-20000:]}"
    assert proc.returncode == 0, log[-20000:]

    # the targets' files, and every file of every run they needed
    jobs = [(rule, w) for rule, w in jobs_of(log) if rule != "all"]
    analysis = [rule for rule, _ in jobs if rule in ANALYSIS_FILES]
    assert set(analysis) >= {t.split("/")[-1].split(".")[0] for t in TARGETS if t != "all"}
    for rule in analysis:
        for name in ANALYSIS_FILES[rule]:
            assert (tmp_path / "paper_figures" / "smoke" / name).stat().st_size > 0, name
    runs = [tmp_path / f"results/smoke/runs/{w['algo']}/{w['env']}/{w['budget']}/seed{w['seed']}"
            for rule, w in jobs if rule == "run"]
    runs += [tmp_path / f"results/smoke/ablations/{w['ablation']}/{w['env']}/{w['budget']}/seed{w['seed']}"
             for rule, w in jobs if rule == "ablation_run"]
    assert runs and {rule for rule, _ in jobs} >= {"run", "ablation_run"}
    for run in runs:
        assert all((run / f).is_file() for f in RUN_FILES), run

    # each training job went through SLURM and completed, on the GPU partition with the GPU
    # that config resources.gpu asks for; the analysis jobs ran locally (localrules)
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    slurm = slurm_jobs(slurm_env, run_id)
    assert all(job["state"] == "COMPLETED" for job in slurm), slurm
    training = [job for job in slurm if re.match(r"rule_(run|ablation_run)_", job["comment"])]
    assert len(training) == len(runs) == len(slurm), (slurm, jobs)
    assert all(job["partition"] == "gpu" and "gpu" in job["gres"] for job in training), training
    assert analysis, "no analysis job ran"  # and none of them is among the cluster's jobs (above)

    # the jobs (each parses the Snakefile again on the node) left every run config as it was:
    # nothing is out of date afterwards
    again = subprocess.run([sys.executable, "-m", "snakemake", *TARGETS, "--dry-run", "--configfile",
                            "config/smoke.yaml", "tests/slurm_profile/gpu.yaml"], cwd=tmp_path, env=slurm_env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and not jobs_of(again.stdout + again.stderr), again.stdout + again.stderr


def test_without_root_the_slurm_test_says_why_it_is_skipped(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in why_slurm_cannot_run()
