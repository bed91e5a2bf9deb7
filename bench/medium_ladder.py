"""The medium ladder (issue 19): which sizes make the baselines learn on this machine, picked by
the rule written in config/medium.yaml's header BEFORE any medium result (MUSBO never runs here).

    python bench/medium_ladder.py [--rungs R1 R2 R3] [--seeds 100 101 102] [--jobs 2] [--plot-only]

Each rung is a set of size factors against the paper (RUNGS); its runs are the medium profile
with the rung's sizes as --set overrides, budget 500k / K, into results/medium/ladder/<rung>/...
(resumable; not committed). Rungs are tried in cost order and the ladder stops as soon as no further
run can change the rule's pick (pick()). --jobs runs a rung's runs side by side (one torch thread
each); each run's CPU time is its own process's (os.wait4), summed over the sittings that made it. Writes bench/medium_ladder.json (rungs, per-seed returns per deployment, CPU-minutes, the
verdict per gating pair and rung, the pick) and bench/medium_ladder.pdf (final return against
CPU-minutes per rung)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from algos.config import load_profile  # noqa: E402
from algos.run import PHASES  # noqa: E402  (metrics.csv's <phase>_s columns)
from learning_check import clear_gain_over_random, run_each  # noqa: E402

# K: budget divisor; f: TRPO iterations = Table 2 x f; samples: imagined samples per TRPO iteration;
# epochs: model/labeler epoch cap (MOPO's too); bc_steps: BREMEN's BC steps; sac_steps and
# rollout_batch: MOPO's per deployment.
RUNGS = {
    "R1": dict(K=10, f=0.025, samples=5000, epochs=20, bc_steps=5000, sac_steps=5000, rollout_batch=5000),
    "R2": dict(K=5, f=0.05, samples=5000, epochs=30, bc_steps=10000, sac_steps=10000, rollout_batch=10000),
    "R3": dict(K=5, f=0.1, samples=10000, epochs=50, bc_steps=20000, sac_steps=20000, rollout_batch=20000),
}
GATING = [("bremen", "halfcheetah"), ("mopo", "halfcheetah"), ("mopo", "hopper")]
REPORTED = [("bremen", "hopper")]           # run and shown, not gating (config/medium.yaml: the rule)
MAX_MEAN_CPU_MIN = 20.0
BUDGET = "500k"


def rung_overrides(rung: str, env: str) -> list[str]:
    """The --set overrides that turn the medium profile into `rung` for `env`."""
    r, paper = RUNGS[rung], load_profile("paper")["run"]
    iterations = paper["envs"][env]["trpo"]["iterations"]
    budgets = paper["defaults"]["budget_samples"]
    return [f"budget_samples.{b}={n // r['K']}" for b, n in budgets.items()] + [
        f"trpo.iterations={round(iterations * r['f'])}", f"trpo.transitions_per_iteration={r['samples']}",
        f"dynamics.max_epochs={r['epochs']}", f"labeler.max_epochs={r['epochs']}",
        f"bremen.model_max_epochs={r['epochs']}", f"mopo.max_epochs={r['epochs']}", f"bc.steps={r['bc_steps']}",
        f"mopo.sac_steps={r['sac_steps']}", f"mopo.rollout_batch={r['rollout_batch']}"]


def run_dir(rung: str, algo: str, env: str, seed: int) -> Path:
    return ROOT / "results" / "medium" / "ladder" / rung / algo / env / BUDGET / f"seed{seed}"


def ensure_run(rung: str, algo: str, env: str, seed: int) -> float:
    """Runs (or resumes) one ladder run; returns its CPU-minutes (kept in cpu_minutes.txt once the
    run is complete; an interrupted sitting's CPU-minutes wait in cpu_minutes_partial.txt and are
    added to the sitting that completes it)."""
    out = run_dir(rung, algo, env, seed)
    cpu_file, partial_file = out / "cpu_minutes.txt", out / "cpu_minutes_partial.txt"
    if (out / "metrics.csv").is_file() and cpu_file.is_file():
        return float(cpu_file.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    run_config = out.parent / f"seed{seed}.run_config.yaml"
    sets = rung_overrides(rung, env)
    subprocess.run([sys.executable, "-m", "algos.config", "write-run-config", "--out", str(run_config),
                    "--profile", "medium", "--algo", algo, "--env", env, "--budget", BUDGET, "--seed", str(seed),
                    "--set", *sets], cwd=ROOT, check=True)
    print(f"medium_ladder: {rung} {algo} {env} seed {seed} -> {out}", file=sys.stderr, flush=True)
    child = subprocess.Popen([sys.executable, "-m", "algos.run", "--run-config", str(run_config), "--out", str(out)],
                             cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU time, whatever runs beside it
    child.returncode = os.waitstatus_to_exitcode(status)
    minutes = (usage.ru_utime + usage.ru_stime) / 60.0
    minutes += float(partial_file.read_text()) if partial_file.is_file() else 0.0
    if child.returncode != 0:
        partial_file.write_text(f"{minutes:.3f}\n")
        raise SystemExit(f"medium_ladder: {rung} {algo} {env} seed {seed} exited {child.returncode}; "
                         f"rerun to resume it")
    cpu_file.write_text(f"{minutes:.3f}\n")
    partial_file.unlink(missing_ok=True)
    return minutes


def read_run(rung: str, algo: str, env: str, seed: int) -> dict | None:
    out = run_dir(rung, algo, env, seed)
    if not ((out / "metrics.csv").is_file() and (out / "cpu_minutes.txt").is_file()):
        return None
    metrics = pd.read_csv(out / "metrics.csv")
    evals = pd.read_csv(out / "eval_returns.csv")
    return {"algo": algo, "env": env, "seed": seed,
            "returns_by_deployment": [float(x) for x in metrics.eval_return_mean],
            "random_policy": float(evals[evals.deployment == 0]["return"].mean()),
            "cpu_minutes": float((out / "cpu_minutes.txt").read_text()),
            # where the run's time went: wall seconds per phase, summed over deployments (metrics.csv)
            "phase_seconds": {p: round(float(metrics[f"{p}_s"].sum()), 1) for p in PHASES}}


def pair_verdict(runs: list[dict]) -> dict:
    """The rule for one gating pair: every seed ends above its deployment-1 return, and the mean
    gain over the random policy exceeds 2 standard errors of the seeds' gains."""
    last = np.array([r["returns_by_deployment"][-1] for r in runs])
    first = np.array([r["returns_by_deployment"][0] for r in runs])
    gain = last - np.array([r["random_policy"] for r in runs])
    ends_above_first = bool((last > first).all())
    clear_gain = bool(clear_gain_over_random(gain))  # a single seed gives no clear gain
    return {"seeds": len(runs), "ends_above_deployment_1": ends_above_first, "clear_gain_over_random": clear_gain,
            "passes": ends_above_first and clear_gain, "mean_last": float(last.mean()),
            "mean_deployment_1": float(first.mean()), "mean_random": float(np.mean([r["random_policy"] for r in runs]))}


def evaluate_rung(rung: str, seeds: list[int]) -> dict:
    runs = [r for algo, env in GATING + REPORTED for seed in seeds if (r := read_run(rung, algo, env, seed))]
    complete = len(runs) == len(GATING + REPORTED) * len(seeds)
    pairs = {}
    for algo, env in GATING + REPORTED:
        mine = [r for r in runs if (r["algo"], r["env"]) == (algo, env)]
        if len(mine) == len(seeds):
            pairs[f"{algo}/{env}"] = {**pair_verdict(mine), "gating": (algo, env) in GATING,
                                      "mean_cpu_minutes": float(np.mean([r["cpu_minutes"] for r in mine])),
                                      "mean_phase_seconds": {p: round(float(np.mean([r["phase_seconds"][p] for r in mine])), 1)
                                                             for p in PHASES}}
    mean_cpu = float(np.mean([r["cpu_minutes"] for r in runs])) if runs else None
    gating_passed = sum(pairs.get(f"{a}/{e}", {}).get("passes", False) for a, e in GATING)
    passed = complete and gating_passed == len(GATING) and mean_cpu <= MAX_MEAN_CPU_MIN
    return {"factors": RUNGS[rung], "complete": complete, "runs": runs, "pairs": pairs,
            "mean_cpu_minutes": mean_cpu, "gating_pairs_passed": gating_passed, "passes": passed}


def costs_at_least(a: str, b: str) -> bool:
    """Rung a does at least rung b's work: no larger budget divisor K, every other size factor as
    large or larger (a run's cost grows with each of them)."""
    fa, fb = RUNGS[a], RUNGS[b]
    return fa["K"] <= fb["K"] and all(fa[k] >= fb[k] for k in fa if k != "K")


def pick(rungs: dict) -> dict:
    """The rule's pick: the cheapest passing rung; if no rung passes, the one with the most gating
    pairs passed, the cheaper on a tie. Decided as soon as further runs cannot change it:
    - a rung cannot pass once it is complete and fails, once one of its gating pairs has failed
      on all its seeds, or once a rung whose work it includes (costs_at_least) is complete and
      over the CPU cap;
    - a rung not fully run may still pass all its gating pairs not yet failed (a rung not run at
      all: all of them)."""
    n_gating = len(GATING)
    for r in RUNGS:
        if r in rungs and rungs[r]["passes"]:
            return {"rung": r, "why": "the cheapest rung that passes the rule"}

    def failed_pairs(r: str) -> int:
        pairs = rungs.get(r, {}).get("pairs", {})
        return sum(1 for a, e in GATING if f"{a}/{e}" in pairs and not pairs[f"{a}/{e}"]["passes"])

    def over_cap(r: str) -> str | None:
        for q in RUNGS:
            cost = rungs.get(q, {}).get("mean_cpu_minutes")
            if rungs.get(q, {}).get("complete") and costs_at_least(r, q) and cost > MAX_MEAN_CPU_MIN:
                return q
        return None

    reasons = {}
    for r in RUNGS:
        if rungs.get(r, {}).get("complete"):
            reasons[r] = "complete, fails"
        elif failed_pairs(r):
            reasons[r] = f"{failed_pairs(r)} gating pair(s) failed on every seed"
        elif q := over_cap(r):
            reasons[r] = (f"does at least {q}'s work, and {q}'s mean run cost "
                          f"{rungs[q]['mean_cpu_minutes']:.1f} > {MAX_MEAN_CPU_MIN:g} CPU-minutes")
    open_rungs = [r for r in RUNGS if r not in reasons]
    if open_rungs:
        return {"rung": None, "why": f"undecided: {open_rungs[0]} may still pass; cannot pass: {reasons}"}
    passed = {r: rungs.get(r, {}).get("gating_pairs_passed", 0) for r in RUNGS}
    best = max(RUNGS, key=lambda r: (passed[r], -list(RUNGS).index(r)))
    # the most gating pairs any unfinished rung could still reach (a pair not yet run may pass)
    reachable = {r: n_gating - failed_pairs(r) if not rungs.get(r, {}).get("complete") else passed[r] for r in RUNGS}
    rivals = [r for r in RUNGS if r != best and (reachable[r] > passed[best] or (
        reachable[r] == passed[best] and list(RUNGS).index(r) < list(RUNGS).index(best)))]
    if rivals:
        return {"rung": None, "why": f"undecided: no rung can pass ({reasons}); {rivals} could still pass "
                                     f"more gating pairs than {best} ({passed[best]})"}
    return {"rung": best, "why": f"no rung passes ({reasons}): the most gating pairs passed "
                                 f"({passed[best]} of {n_gating}), the cheaper on a tie"}


def plot(rungs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rung in rungs.items():
        for key, runs in pd.DataFrame(rung["runs"]).groupby(["algo", "env"]) if rung["runs"] else []:
            finals = [r[-1] for r in runs.returns_by_deployment]
            ax.errorbar(runs.cpu_minutes.mean(), np.mean(finals), yerr=np.std(finals), fmt="o", capsize=3,
                        label=f"{name} {key[0]} {key[1]}")
    ax.set_xlabel("CPU-minutes per run (mean over seeds)")
    ax.set_ylabel("final eval return (mean ± sd over seeds)")
    ax.set_title("Medium ladder (baselines only; rule in config/medium.yaml)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    parser.add_argument("--jobs", type=int, default=1, help="ladder runs side by side (one torch thread each)")
    parser.add_argument("--plot-only", action="store_true", help="summarise the runs on disk, run nothing")
    args = parser.parse_args()
    out = ROOT / "bench" / "medium_ladder.json"
    # rungs not asked for this time keep what the committed JSON says of them (their run
    # directories are not committed, so an earlier sitting's runs may be gone from disk)
    earlier = json.loads(out.read_text())["rungs"] if out.is_file() else {}
    rungs = {r: earlier[r] for r in RUNGS if r in earlier and r not in args.rungs}
    for rung in [r for r in RUNGS if r in args.rungs]:
        if pick(rungs)["rung"] is not None:
            break  # the rule has picked: no further run can change it
        if not args.plot_only:
            run_each(ensure_run, [(rung, algo, env, seed) for algo, env in GATING + REPORTED for seed in args.seeds],
                     args.jobs)
        rungs[rung] = evaluate_rung(rung, args.seeds)
    rungs = {r: rungs[r] for r in RUNGS if r in rungs}
    result = {"rule": "config/medium.yaml header (also docs/paper_to_code.md, 'The medium profile')",
              "seeds": args.seeds, "gating": [f"{a}/{e}" for a, e in GATING],
              "reported": [f"{a}/{e}" for a, e in REPORTED], "max_mean_cpu_minutes": MAX_MEAN_CPU_MIN,
              "rungs": rungs, "pick": pick(rungs)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rungs, out.with_suffix(".pdf"))
    for name, rung in rungs.items():
        print(f"{name}: complete={rung['complete']} mean CPU-min={rung['mean_cpu_minutes']} passes={rung['passes']}")
        for pair, v in rung["pairs"].items():
            cost = (f"; {v['mean_cpu_minutes']:.1f} CPU-min (wall s: "
                    + ", ".join(f"{p} {t:.0f}" for p, t in v["mean_phase_seconds"].items()) + ")"
                    if "mean_phase_seconds" in v else "")  # R1's record predates the phase times
            print(f"  {pair}: deployment 1 {v['mean_deployment_1']:.0f} -> last {v['mean_last']:.0f} "
                  f"(random {v['mean_random']:.0f}) passes={v['passes']}{cost}")
    print(f"pick: {result['pick']}\nwritten: {out}")


if __name__ == "__main__":
    main()
