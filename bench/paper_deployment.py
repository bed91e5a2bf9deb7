"""One paper-size deployment here (issue 15): MUSBO, paper profile, HalfCheetah, 500k budget over
5 deployments (100k transitions per batch), deployments 1..--stop-after (2) at full data size,
through the project's own run (`python -m algos.run ... --profile paper --set ...`).

Where the paper's numbers would take hours on this CPU, they are reduced, each by an option with
a stated default (0 = keep the profile's value); every reduction is printed and recorded:

    --trpo-iterations   trpo.iterations                         paper 2000 -> 20
    --model-max-epochs  dynamics.max_epochs, labeler.max_epochs paper 200  -> 10 (patience 3 still applies)
    --bc-max-epochs     bc.max_epochs                           paper 100  -> 20 (patience 3 still applies)

`deployments` stays 5 so that a batch is budget / 5; the run is stopped right after the
checkpoint of deployment --stop-after through the run's own kill point (MUSBO_KILL_AT=collect:<n+1>,
algos/run.py: maybe_kill_for_test), so nothing of deployment n+1 is computed. Recorded: seconds per
phase and deployment (the checkpoint's metrics rows), peak resident memory of the run process
(os.wait4 on that process alone), imagined samples per TRPO iteration (scalars.csv: policy/live_samples),
epochs and steps the fits took, and the machine (CPU count, the run's torch threads).

    python bench/paper_deployment.py [--tiny] [--trpo-iterations N] [--model-max-epochs N]
                                     [--bc-max-epochs N] [--stop-after N] [--keep DIR] [--json FILE]
    python -m bench --only paper_deployment      (the same, into bench/results.json)

--tiny: the smoke profile with deployments=3, stopped after 2: the same path in seconds (tests).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import resolve_run_config  # noqa: E402
from algos.rundir import read_checkpoint  # noqa: E402
from algos.run import PHASES  # noqa: E402

ALGO, ENV, BUDGET, SEED = "musbo", "halfcheetah", "500k", 0
# option -> (config keys it sets, default for the paper-size run, default for --tiny)
REDUCTIONS = {
    "trpo_iterations": (("trpo.iterations",), 20, 2),
    "model_max_epochs": (("dynamics.max_epochs", "labeler.max_epochs"), 10, 2),
    "bc_max_epochs": (("bc.max_epochs",), 20, 2),
}
TINY_DEPLOYMENTS = 3  # smoke has 2; 3 so that --tiny stops the run as the paper-size run does


def lookup(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def plan(tiny: bool, reductions: dict, stop_after: int) -> tuple[str, list[str], dict, dict]:
    """(profile, --set overrides, resolved config, reductions record {key: {profile, used}})."""
    profile = "smoke" if tiny else "paper"
    base = [f"deployments={TINY_DEPLOYMENTS}"] if tiny else []
    reference = resolve_run_config(profile, ALGO, ENV, BUDGET, SEED, base)
    overrides, record = list(base), {}
    for option, (keys, paper_default, tiny_default) in REDUCTIONS.items():
        value = reductions.get(option)
        value = (tiny_default if tiny else paper_default) if value is None else value
        if value < 0:
            raise SystemExit(f"error: --{option.replace('_', '-')} must be >= 0 (0 keeps the profile's value)")
        for key in keys:
            used = value if value else lookup(reference, key)
            record[key] = {"profile": lookup(reference, key), "used": used}
            if value:
                overrides.append(f"{key}={value}")
    cfg = resolve_run_config(profile, ALGO, ENV, BUDGET, SEED, overrides)
    if not 1 <= stop_after <= cfg["deployments"]:
        raise SystemExit(f"error: --stop-after {stop_after} must be in 1..{cfg['deployments']} (the run's deployments)")
    return profile, overrides, cfg, record


def run_until(out: Path, profile: str, overrides: list[str], stop_after: int, deployments: int) -> tuple[float, float]:
    """Run algos.run into `out`, stopped after deployment `stop_after`; (wall seconds, peak RSS MiB)."""
    cmd = [sys.executable, "-m", "algos.run", "--algo", ALGO, "--env", ENV, "--budget", BUDGET, "--seed", str(SEED),
           "--profile", profile, "--out", str(out)] + (["--set", *overrides] if overrides else [])
    env = dict(os.environ)
    if stop_after < deployments:
        env["MUSBO_KILL_AT"] = f"collect:{stop_after + 1}"  # the first thing deployment n+1 would do
    else:
        env.pop("MUSBO_KILL_AT", None)
    print("paper_deployment: " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)  # this process alone, not every child the bench ran
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    stopped = stop_after < deployments and proc.returncode == -signal.SIGKILL
    if proc.returncode != 0 and not stopped:
        raise RuntimeError(f"the run exited with {proc.returncode} before deployment {stop_after} finished "
                           "(its output is above)")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def read_scalars(path: Path) -> dict:
    """Per deployment: TRPO iterations and imagined samples per iteration, epochs of the fits, BC steps."""
    out: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            d = out.setdefault(int(row["deployment"]), {"live_samples": []})
            phase, name, value = row["phase"], row["name"], float(row["value"])
            if phase == "policy" and name == "live_samples":
                d["live_samples"].append(value)
            elif name == "epochs" and phase in ("model", "labeler"):
                d[f"{phase}_epochs"] = int(value)
            elif phase == "bc" and name == "steps":
                d["bc_steps"] = int(value)
            elif phase == "bc" and name == "bc_loss":  # one row per epoch, epochs counted from 1
                d["bc_epochs"] = max(d.get("bc_epochs", 0), int(row["step"]))
    return out


def measure(tiny: bool = False, reductions: dict | None = None, stop_after: int = 2, keep: Path | None = None) -> dict:
    profile, overrides, cfg, record = plan(tiny, reductions or {}, stop_after)
    for key, r in record.items():
        note = "kept" if r["used"] == r["profile"] else "REDUCED"
        print(f"paper_deployment: {key} = {r['used']} ({note}; {profile} profile: {r['profile']})", file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix="paper_deployment_"))
    out = (keep if keep is not None else scratch / "run")
    load = os.getloadavg()[0]
    try:
        seconds, peak_mib = run_until(out, profile, overrides, stop_after, cfg["deployments"])
        ckpt = out / "checkpoints" / f"deployment_{stop_after}.pt"
        state = read_checkpoint(ckpt) if ckpt.is_file() else None
        if state is None:
            raise RuntimeError(f"no verified checkpoint {ckpt} after the run")
        rows = json.loads(state["rows"])
        scalars = read_scalars(out / "scalars.csv")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    deployments, totals = {}, {p: 0.0 for p in PHASES}
    for m in rows["metrics"]:
        d = m["deployment"]
        s = scalars.get(d, {"live_samples": []})
        live = s["live_samples"]
        phases = {p: float(m[f"{p}_s"]) for p in PHASES}
        for p in PHASES:
            totals[p] += phases[p]
        deployments[str(d)] = {
            "phases_s": phases, "samples_total": m["samples_total"], "eval_return_mean": m["eval_return_mean"],
            "trpo_iterations": len(live), "imagined_samples_per_iteration": (sum(live) / len(live)) if live else None,
            "policy_s_per_trpo_iteration": phases["policy"] / len(live) if live else None,
            "model_epochs": s.get("model_epochs"), "labeler_epochs": s.get("labeler_epochs"),
            "model_s_per_epoch": phases["model"] / s["model_epochs"] if s.get("model_epochs") else None,
            "labeler_s_per_epoch": phases["labeler"] / s["labeler_epochs"] if s.get("labeler_epochs") else None,
            "bc_epochs": s.get("bc_epochs"), "bc_steps": s.get("bc_steps")}
    last = rows["provenance"][-1]
    t = cfg["trpo"]
    return {
        "profile": profile, "tiny": tiny, "algo": ALGO, "env": ENV, "budget": BUDGET, "seed": SEED,
        "command_overrides": overrides, "deployments_configured": cfg["deployments"], "deployments_run": stop_after,
        "batch_size": cfg["batch_size"], "reductions": record,
        "imagined_samples_per_iteration_configured": t["transitions_per_iteration"],
        "rollouts_per_iteration": t["transitions_per_iteration"] // t["rollout_length"],
        "rollout_length": t["rollout_length"],
        "deployments": deployments, "phases_s_total": totals, "wall_s": seconds, "peak_rss_mib": peak_mib,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": last["threads"], "device": last["device"],
                    "host": last["host"], "load_avg_1min_start": load, "load_avg_1min_end": os.getloadavg()[0]},
    }


def run(quick: bool = False) -> dict:
    """The bench section (bench/__main__.py): the paper-size run with the stated defaults. Long;
    the bench runner never calls it in --quick."""
    if quick:
        raise ValueError("paper_deployment is a long section: it does not run in --quick")
    return measure()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="smoke sizes, deployments=3 stopped after 2 (seconds)")
    for option, (keys, paper_default, tiny_default) in REDUCTIONS.items():
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=None, metavar="N",
                            help=f"sets {', '.join(keys)}; default {paper_default} ({tiny_default} with --tiny); "
                                 "0 keeps the profile's value")
    parser.add_argument("--stop-after", type=int, default=2, help="the last deployment run (default 2)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="run into DIR and keep it (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    result = measure(args.tiny, {k: getattr(args, k) for k in REDUCTIONS}, args.stop_after, args.keep)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
