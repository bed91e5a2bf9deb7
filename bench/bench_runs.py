"""Whole runs: one mini run per algorithm and env (500k budget, seed 0), timed by phase; the mini
grid's total (from the workflow's own benchmark files when `make figures` has run, else
projected from these runs); and a projection of one paper-profile MUSBO run from rates that
the other bench modules measure.

    python bench/bench_runs.py [--quick]      (--quick: smoke runs of the three algorithms)
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import ALGOS, load_profile, resolve_run_config  # noqa: E402
from algos.run import PHASES  # noqa: E402
from envs import ENV_NAMES  # noqa: E402

# 250k runs have half the data of 500k runs; measured mini runs take about this fraction of the time.
BUDGET_250K_TIME_FRACTION = 0.7


def timed_run(profile: str, algo: str, env: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "algos.run", "--algo", algo, "--env", env, "--budget", "500k",
                               "--seed", "0", "--profile", profile, "--out", out],
                              cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{algo} {env} failed:\n{proc.stderr[-2000:]}")
        rows = list(csv.DictReader(open(Path(out) / "metrics.csv")))
    phases = {p: sum(float(r[f"{p}_s"]) for r in rows) for p in PHASES}
    return {"seconds": seconds, "final_return": float(rows[-1]["eval_return_mean"]), **{f"{p}_s": v for p, v in phases.items()}}


def grid_minutes_from_workflow(cores: int = 2) -> float | None:
    """Sum of the mini workflow's per-job wall seconds (Snakemake benchmark files) / cores."""
    files = list((ROOT / "benchmarks" / "mini").rglob("*.tsv"))
    if not files:
        return None
    total = 0.0
    for f in files:
        rows = list(csv.DictReader(open(f), delimiter="\t"))
        total += float(rows[-1]["s"]) if rows else 0.0
    return total / cores / 60


def run(quick: bool) -> dict:
    profile, envs = ("smoke", ("halfcheetah",)) if quick else ("mini", ENV_NAMES)
    out = {"profile": profile, "runs": {}}
    for env in envs:
        for algo in ALGOS:
            print(f"bench_runs: {profile} {algo} {env}", file=sys.stderr, flush=True)
            out["runs"][f"{algo}/{env}"] = timed_run(profile, algo, env)
    cfg = load_profile("mini")
    measured = grid_minutes_from_workflow()
    if measured is not None:
        out["mini_grid_minutes"], out["mini_grid_minutes_source"] = measured, "benchmarks/mini (sum of job seconds / 2 cores)"
    elif not quick:
        one_seed = sum(r["seconds"] for r in out["runs"].values()) * (1 + BUDGET_250K_TIME_FRACTION)
        n_ablation_runs = len(cfg["ablations"]) * len(cfg["ablation_seeds"])
        ablation = n_ablation_runs * out["runs"][f"musbo/{cfg['ablation_env']}"]["seconds"]
        out["mini_grid_minutes"] = (one_seed * len(cfg["seeds"]) + ablation) / 2 / 60
        out["mini_grid_minutes_source"] = "projected from the mini runs above (500k measured, 250k at 0.7x), 2 cores"
    else:
        out["mini_grid_minutes"], out["mini_grid_minutes_source"] = None, "not measured in --quick mode"
    out["paper_run_hours_projected"] = None  # filled in by bench/__main__.py from the measured rates
    return out


def project_paper_run_hours(models: dict, trpo: dict, collect: dict, epochs_per_deployment: int = 10) -> dict:
    """Hours of one paper-profile MUSBO run per env at 500k, from measured rates:
    collection at the collector's random-action rate; dynamics (5 members) and labeler (3)
    trained `epochs_per_deployment` epochs on 85 % of D_all at the batched training rate
    (an assumption: early stopping decides the real number); per TRPO iteration one update at
    the measured 50k-transition time (scaled) plus the imagined transitions at the measured rate
    of MUSBO's rollouts (dynamics, eq. 12 labels, policy). The update time is measured on
    `trpo["transitions"]` transitions (50k in full mode) and scaled linearly."""
    train_rate = models["train_paper_batched_member_samples_per_s"]
    rollout_rate = models["rollout_paper_musbo_transitions_per_s"]
    update_per_transition = trpo["update"]["time_total"] / trpo["transitions"]
    hours = {}
    for env in ENV_NAMES:
        cfg = resolve_run_config("paper", "musbo", env, "500k", 0)
        I, B, t = cfg["deployments"], cfg["batch_size"], cfg["trpo"]
        rate = collect["envs"].get(env, {}).get("collector_steps_per_s")
        seconds = I * B / rate if rate else 0.0
        for i in range(1, I + 1):
            samples = 0.85 * i * B * epochs_per_deployment
            seconds += samples * (cfg["dynamics"]["members"] + cfg["labeler"]["members"]) / train_rate
            n = t["transitions_per_iteration"]
            seconds += t["iterations"] * (update_per_transition * n + n / rollout_rate)
        hours[env] = seconds / 3600
    return hours


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    res = run(parser.parse_args().quick)
    for key, row in res["runs"].items():
        print(f"{key:24s} {row['seconds']:7.1f} s  final return {row['final_return']:9.1f}  "
              + " ".join(f"{p} {row[f'{p}_s']:.1f}" for p in PHASES))
    print(f"mini grid minutes: {res['mini_grid_minutes']} ({res['mini_grid_minutes_source']})")
