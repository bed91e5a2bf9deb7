"""The speed suite: `make bench` (or `python -m bench [--quick]`) runs every bench module in one
process, side by side, prints the headline table and writes bench/results.json.

Ratios, not absolute numbers, are what to compare across machines: each ratio is measured
within one run (e.g. ensemble training vs the GEMM peak measured just before it)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bench_* modules sit beside this file

import bench_collect  # noqa: E402
import bench_models  # noqa: E402
import bench_novelty  # noqa: E402
import bench_rollouts  # noqa: E402
import bench_runs  # noqa: E402
import bench_sac  # noqa: E402
import bench_trpo  # noqa: E402
import paper_deployment  # noqa: E402


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE)
    return out.stdout.strip() or "unknown"


SECTIONS = {"models": lambda quick: bench_models.run(quick, threads=1, clock="cpu"),
            "trpo": bench_trpo.run, "sac": bench_sac.run, "collect": bench_collect.run,
            "novelty": bench_novelty.run, "runs": bench_runs.run, "rollouts": bench_rollouts.run,
            "paper_deployment": paper_deployment.run}
LONG = {"paper_deployment"}  # not run in --quick (a paper-size deployment: tens of minutes)


def headline(sections: dict, quick: bool, seconds: float) -> dict:
    """The keys of bench/results.json, from the sections' raw measurements."""
    models, collect, runs = sections["models"], sections["collect"], sections["runs"]
    runs["paper_run_hours_projected"] = bench_runs.project_paper_run_hours(models, sections["trpo"], collect)
    fractions = [row["collect_fraction_of_physics"] for row in collect["envs"].values()]
    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "git_commit": git_commit(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "quick": quick,
        "gemm_gflops": models["gemm_gflops"],
        "ensemble_train_fraction_of_peak": models["train_paper_batched_frac_peak"],
        "ensemble_train_batched_vs_loop": (models["train_paper_batched_member_samples_per_s"]
                                           / models["train_paper_loop_member_samples_per_s"]),
        # imagined rollouts at the real shapes (bench_rollouts): per sequential step, and one paper run
        "rollout_us_per_step": {k: v["engines"][v["best_engine"]]["wall_us_per_step"]
                                for k, v in sections["rollouts"]["shapes"].items()},
        "rollout_dispatch_speedup_vs_legacy": {k: v["dispatch_speedup_vs_legacy"]
                                               for k, v in sections["rollouts"]["shapes"].items()},
        "rollout_syncs_per_step": {k: v["engines"][v["best_engine"]]["syncs_per_step"]
                                   for k, v in sections["rollouts"]["shapes"].items()},
        "rollout_paper_run_trpo_hours": {k: v.get("trpo_hours") for k, v in sections["rollouts"]["projection_hours"].items()},
        # the old figure: 50,000 states in ONE step (a shape training never runs), kept as a row
        "rollout_fraction_of_peak_one_step_50k": models["rollout_paper_musbo_frac_peak"],  # dynamics + eq. 12 labels + policy
        "rollout_fraction_of_peak_dynamics_only": models["rollout_paper_frac_peak"],
        "collect_fraction_of_physics": min(fractions),
        "collect_fraction_of_physics_per_env": {k: v["collect_fraction_of_physics"] for k, v in collect["envs"].items()},
        "novelty_speedup_vs_bruteforce": sections["novelty"]["novelty_speedup_vs_bruteforce"],
        "trpo_update_seconds": sections["trpo"]["update"]["time_total"],
        "trpo_update_transitions": sections["trpo"]["transitions"],
        "sac_update_ms": sections["sac"]["sac_update_ms"],
        "mini_grid_minutes": runs["mini_grid_minutes"],
        "mini_grid_minutes_source": runs["mini_grid_minutes_source"],
        "paper_run_hours_projected": runs["paper_run_hours_projected"],
        # one paper-size deployment (bench/paper_deployment.py): seconds per phase, peak RSS; None in --quick
        "paper_deployment": {k: sections["paper_deployment"][k] for k in (
            "phases_s_total", "wall_s", "peak_rss_mib", "imagined_samples_per_iteration_configured", "reductions")}
        if "paper_deployment" in sections else None,
        "bench_seconds": seconds,
        "sections": sections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes (smoke runs, no mini runs)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), metavar="SECTION",
                        help="rerun these sections only and update them in an existing --out "
                             f"(sections: {', '.join(SECTIONS)}); each section records its own git commit")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    t0 = time.time()
    sections, names = {}, list(SECTIONS)
    if args.only:
        if not args.out.is_file():
            sys.exit(f"--only needs an existing {args.out}; run the whole bench first")
        previous = json.loads(args.out.read_text())
        if previous["quick"] != args.quick:
            sys.exit(f"{args.out} was measured with quick={previous['quick']}; pass the same mode")
        sections, names = previous["sections"], args.only
        for section in sections.values():  # kept sections: the commit they were measured at
            section.setdefault("git_commit", previous["git_commit"])
    for name in names:
        if args.quick and name in LONG:
            print(f"bench: {name} skipped (long: not run in --quick)", file=sys.stderr, flush=True)
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        sections[name] = {**SECTIONS[name](args.quick), "git_commit": git_commit()}
    seconds = time.time() - t0 + (previous["bench_seconds"] if args.only else 0.0)
    results = headline(sections, args.quick, seconds)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, args.out)
    print(f"\n{'measure':40s} value")
    for key, value in results.items():
        if key != "sections":
            print(f"{key:40s} {json.dumps(value, default=float) if isinstance(value, dict) else value}")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
