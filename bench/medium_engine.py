"""The rollout engine at the medium profile's own shapes (issue 19: "pick the rollout engine per
device by measurement at the run's own shapes"): one MUSBO TRPO iteration (imagine + eq. 12
labels + GAE + update, bench_rollouts.trpo_iteration) under `eager` and `compiled`, side by side
in one process, per env shape of config/medium.yaml, on one torch thread:

  iteration_s      the fastest of `--repeats` iterations after a warm-up, in CPU seconds of this
                   process (one thread: robust to other jobs on the cores)
  compile_s        the warm-up's extra wall seconds: torch.compile of the step, once per process
  run_policy_min   projected TRPO minutes of one medium run: deployments x iterations x iteration_s
                   (+ compile_s per deployment resumed in a new process: counted once here)
  sequential_steps deployments x iterations x rollout_length: the imagined steps a run takes in
                   sequence, what algos/core/rollouts.py's `auto` reads on the CPU

Hopper and Walker2d run 5 lanes x 1000 steps per iteration (5000 transitions / rollout length
1000): a few rows per op, so the step is dispatch-bound and fusing it pays. HalfCheetah, Ant and
Cheetah-Run run 20 lanes x 250.

    python bench/medium_engine.py [--envs hopper walker2d halfcheetah] [--repeats 3] [--out FILE]

The same question on whole grid runs, measured by the runs themselves (no timing here):

    python bench/medium_engine.py --grid [--out bench/medium_engine_grid.json]

reads the committed 500k medium runs of the TRPO algorithms (results/medium/runs/{bremen,musbo})
and gives, per algorithm, env and engine, the policy phase (TRPO) wall minutes per deployment
(metrics.csv `policy_s`) beside the engine each deployment's process ran (provenance.json
`rollout_engine`; a deployment without that field ran before commit 4e14fd2, when `auto` was
eager on the CPU). Grid runs are not side by side: each ran beside one other job (a few eager ones
beside CI too), so these ratios are coarser than the iteration's.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import algos.core.rollouts as rollouts  # noqa: E402
import bench.bench_rollouts as br  # noqa: E402
from algos.config import resolve_run_config  # noqa: E402
from algos.rundir import atomic_write_bytes  # noqa: E402

ENGINES = ("eager", "compiled")
ROOT = Path(__file__).resolve().parents[1]
TRPO_ALGOS = ("bremen", "musbo")  # the algorithms whose policy phase steps imagined rollouts in sequence


def measure(env: str, repeats: int, quick: bool = False) -> dict:
    run = resolve_run_config("medium", "musbo", env, "500k", 0)                    # the run's own sizes
    shape = br.bench_config("musbo", env, torch.device("cpu"), quick, profile="medium")["trpo"]  # what is timed
    iterations_total = run["deployments"] * run["trpo"]["iterations"]
    row = {"lanes": max(1, shape["transitions_per_iteration"] // shape["rollout_length"]),
           "rollout_length": shape["rollout_length"], "iterations_per_run": iterations_total,
           "sequential_steps": iterations_total * run["trpo"]["rollout_length"], "engines": {}}
    for engine in ENGINES:
        torch._dynamo.reset()
        rollouts.COMPILED["advance"] = None  # compile afresh: a new process's cost
        it = br.trpo_iteration(torch.device("cpu"), quick, env, profile="medium", engine=engine, repeats=repeats)
        compile_s = max(0.0, it["first_call_wall_s"] - it["iteration_wall_s"])
        row["engines"][engine] = {"iteration_s": it["iteration_s"], "compile_s": compile_s,
                                  "run_policy_min": (iterations_total * it["iteration_s"] + compile_s) / 60}
    e, c = row["engines"]["eager"], row["engines"]["compiled"]
    row["iteration_speedup"] = e["iteration_s"] / c["iteration_s"]
    row["run_policy_min_saved"] = e["run_policy_min"] - c["run_policy_min"]
    return row


def grid_deployments(runs: Path) -> list[dict]:
    """One row per deployment of every complete 500k run of a TRPO algorithm under `runs`."""
    rows = []
    for metrics in sorted(runs.glob("*/*/500k/seed*/metrics.csv")):
        run = metrics.parent
        algo, env = run.parts[-4], run.parts[-3]
        if algo not in TRPO_ALGOS:
            continue
        engines = {d["deployment"]: d.get("rollout_engine") or "eager"
                   for d in json.loads((run / "provenance.json").read_text())["deployments"]}
        for r in csv.DictReader(open(metrics)):
            rows.append({"algo": algo, "env": env, "seed": int(run.name[4:]), "deployment": int(r["deployment"]),
                         "engine": engines[int(r["deployment"])], "policy_min": float(r["policy_s"]) / 60})
    return rows


def grid_summary(runs: Path) -> dict:
    """Per algorithm, env and engine: deployments, runs, and the mean TRPO minutes per deployment;
    per algorithm and env, the eager / compiled ratio where both engines ran."""
    out = {}
    for row in grid_deployments(runs):
        cell = out.setdefault(f"{row['algo']} {row['env']}", {}).setdefault(row["engine"], {"minutes": [], "seeds": set()})
        cell["minutes"].append(row["policy_min"])
        cell["seeds"].add(row["seed"])
    for name, cell in out.items():
        for engine, c in cell.items():
            cell[engine] = {"deployments": len(c["minutes"]), "seeds": sorted(c["seeds"]),
                            "policy_min_per_deployment": sum(c["minutes"]) / len(c["minutes"])}
        if "eager" in cell and "compiled" in cell:
            cell["speedup"] = (cell["eager"]["policy_min_per_deployment"]
                               / cell["compiled"]["policy_min_per_deployment"])
    return dict(sorted(out.items()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["hopper", "walker2d", "halfcheetah"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test)")
    p.add_argument("--grid", action="store_true", help="summarise the committed grid runs instead (no timing)")
    p.add_argument("--runs", type=Path, default=ROOT / "results" / "medium" / "runs", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="default: bench/medium_engine.json (--grid: medium_engine_grid.json)")
    args = p.parse_args(argv)
    if args.grid:
        out = {"source": "results/medium/runs: metrics.csv policy_s (wall), provenance.json rollout_engine",
               "cells": grid_summary(args.runs)}
        atomic_write_bytes(args.out or Path(__file__).with_name("medium_engine_grid.json"),
                           (json.dumps(out, indent=1) + "\n").encode())
        for name, cell in out["cells"].items():
            print(name + ": " + ", ".join(f"{e} {c['policy_min_per_deployment']:.2f} min x {c['deployments']}"
                                          for e, c in cell.items() if e in ENGINES)
                  + (f" ({cell['speedup']:.2f}x)" if "speedup" in cell else ""))
        return out
    torch.set_num_threads(1)
    br._clock = time.process_time
    out = {"torch": torch.__version__, "torch_threads": 1, "clock": "process_time (iterations), wall (compile_s)",
           "quick": args.quick,
           "load_avg_1min_start": round(os.getloadavg()[0], 2),
           "envs": {env: measure(env, args.repeats, args.quick) for env in args.envs},
           "load_avg_1min_end": round(os.getloadavg()[0], 2)}
    atomic_write_bytes(args.out or Path(__file__).with_name("medium_engine.json"),
                       (json.dumps(out, indent=1) + "\n").encode())
    for env, r in out["envs"].items():
        e, c = r["engines"]["eager"], r["engines"]["compiled"]
        print(f"{env}: {r['lanes']} lanes x {r['rollout_length']}: iteration {e['iteration_s']:.3f} s eager, "
              f"{c['iteration_s']:.3f} s compiled ({r['iteration_speedup']:.2f}x), compile {c['compile_s']:.0f} s; "
              f"TRPO per run {e['run_policy_min']:.1f} -> {c['run_policy_min']:.1f} min")
    return out


if __name__ == "__main__":
    main()
