"""Learning check (outside the unit tests): on the mini (default) or medium profile, HalfCheetah
and Hopper at 500k, does the last deployment's eval return beat the uniform random policy
(deployment 0 of eval_returns.csv) and the first deployment by a clear margin? Beside the random
policy: standing still (action 0 at every step, from the same start states), since a policy
that learned only to stand still scores about 0 on HalfCheetah but about 1000 on Ant.

    python bench/learning_check.py [--profile mini|medium] [--seeds 0 1 2] [--envs halfcheetah hopper]
        [--algos musbo bremen mopo] [--jobs 2] [--previous bench/learning_check_previous_defaults.json]

Runs of the profile's grid (results/<profile>/runs/...) are reused when complete; other seeds
run into results/<profile>/learning_check/... (resumable: rerunning continues where a run
stopped). Prints every seed (random policy, still policy, deployment 1, last deployment) and the
summary per algorithm and env; writes bench/learning_check.json (mini) or bench/learning_check_<profile>.json.
"Clear margin": the last deployment's mean over seeds exceeds the random policy's by more than 2
standard errors of the seed means (one seed far above the others can fail it, so
`every_seed_beats_random` is reported beside it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import load_profile, read_config_file  # noqa: E402
from analysis.standing_still import still_policy_return  # noqa: E402


def run_dir(profile: str, algo: str, env: str, seed: int, grid_seeds) -> Path:
    kind = "runs" if seed in grid_seeds else "learning_check"
    return ROOT / "results" / profile / kind / algo / env / "500k" / f"seed{seed}"


def ensure_run(profile: str, algo: str, env: str, seed: int, out: Path) -> None:
    if (out / "metrics.csv").is_file():
        return
    print(f"learning_check: running {profile} {algo} {env} seed {seed} -> {out}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "algos.run", "--algo", algo, "--env", env, "--budget", "500k",
                    "--seed", str(seed), "--profile", profile, "--out", str(out)], cwd=ROOT, check=True)


def run_each(start, todo: list[tuple], jobs: int) -> None:
    """start(*r) for each r of `todo`, `jobs` at a time (start runs a run subprocess and waits);
    once one fails or is stopped (exit 75), no further one starts, and the failure is raised when
    the running ones have ended."""
    stopping = threading.Event()

    def one(r: tuple) -> None:
        if stopping.is_set():
            return
        try:
            start(*r)
        except BaseException:
            stopping.set()
            raise
    with ThreadPoolExecutor(jobs) as pool:  # threads only wait on the run subprocesses
        list(pool.map(one, todo))


def clear_gain_over_random(gains) -> bool | None:
    """The check's "clear margin": the mean over seeds of (last deployment - random policy) exceeds
    2 standard errors of those gains; None with a single seed (no standard error)."""
    gains = np.asarray(gains, dtype=float)
    if len(gains) < 2:
        return None
    return bool(gains.mean() > 2 * gains.std(ddof=1) / np.sqrt(len(gains)))


def side_by_side(table: pd.DataFrame, previous_json: Path) -> pd.DataFrame:
    """The previous check's last-deployment mean and sd for each (env, algo) row of `table`
    (NaN where the previous check did not have that pair)."""
    if not previous_json.is_file():
        raise SystemExit(f"error: --previous {previous_json} does not exist; pass an earlier learning_check.json")
    old = pd.DataFrame(json.loads(previous_json.read_text())["summary"])
    # only this check's own columns: a file made with --previous also holds previous_* columns
    old = old[["env", "algo", "last_deployment", "last_sd"]].rename(columns={"last_deployment": "previous_last", "last_sd": "previous_last_sd"})
    return table[["env", "algo"]].merge(old[["env", "algo", "previous_last", "previous_last_sd"]],
                                        on=["env", "algo"], how="left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=["mini", "medium"], default="mini")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--envs", nargs="+", default=["halfcheetah", "hopper"])
    parser.add_argument("--algos", nargs="+", default=["musbo", "bremen", "mopo"])
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (one torch thread each)")
    parser.add_argument("--previous", type=Path, default=None,
                        help="an earlier learning_check.json (e.g. bench/learning_check_previous_defaults.json): "
                             "its last-deployment means are shown beside this run's")
    args = parser.parse_args()
    grid_seeds = load_profile(args.profile)["seeds"]
    runs = [(algo, env, seed, run_dir(args.profile, algo, env, seed, grid_seeds))
            for env in args.envs for algo in args.algos for seed in args.seeds]
    run_each(lambda *r: ensure_run(args.profile, *r), runs, args.jobs)
    rows = []
    for algo, env, seed, out in runs:
        metrics = pd.read_csv(out / "metrics.csv")
        evals = pd.read_csv(out / "eval_returns.csv")
        cfg = read_config_file(out / "config.yaml")
        rows.append({"env": env, "algo": algo, "seed": seed,
                     "random_policy": evals[evals.deployment == 0]["return"].mean(),
                     "still_policy": still_policy_return(env, cfg["seed"], cfg["eval_episodes"]),
                     "deployment_1": metrics.eval_return_mean.iloc[0],
                     "last_deployment": metrics.eval_return_mean.iloc[-1],
                     "best_deployment": metrics.eval_return_mean.max()})
    df = pd.DataFrame(rows)
    summary = []
    for (env, algo), g in df.groupby(["env", "algo"], sort=False):
        gain = g.last_deployment - g.random_policy
        summary.append({"env": env, "algo": algo, "seeds": len(g),
                        "random_policy": g.random_policy.mean(), "still_policy": g.still_policy.mean(),
                        "deployment_1": g.deployment_1.mean(),
                        "last_deployment": g.last_deployment.mean(), "last_sd": g.last_deployment.std(ddof=1),
                        "best_deployment": g.best_deployment.mean(),
                        "clear_gain_over_random": clear_gain_over_random(gain),
                        "every_seed_beats_random": bool((gain > 0).all()),
                        "last_beats_deployment_1": bool((g.last_deployment > g.deployment_1).all())})
    table = pd.DataFrame(summary)
    if args.previous is not None:
        previous = side_by_side(table, args.previous)
        for row, prev in zip(summary, previous.to_dict("records")):
            row.update(previous_last_deployment=prev["previous_last"], previous_last_sd=prev["previous_last_sd"])
        table = pd.DataFrame(summary)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"{args.profile}, 500k, every seed:")
        print(df.round(1).to_string(index=False))
        print("\nper algorithm and env:")
        print(table.round(1).to_string(index=False))
    out = ROOT / "bench" / ("learning_check.json" if args.profile == "mini" else f"learning_check_{args.profile}.json")
    out.write_text(json.dumps({"profile": args.profile, "per_run": rows, "summary": summary}, indent=2, default=float))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
