"""The GPU check of issue 15, run by bench/gpu_check.sh (53 s on one H200):
writes bench/results_cuda.json with

  rollouts          bench_rollouts at the real shapes (200 x 250, 50 x 1000): wall and dispatch us
                    per imagined step, ops and syncs per step, legacy loop vs the engines
  trpo_iteration    one MUSBO TRPO iteration at paper shape through model_trpo.train_in_model
  model_fit_epoch   one epoch of the paper-size dynamics (5 x 2 x 1024) and labeler (3 x 2 x 1024,
                    Gaussian) fits on 425k transitions (85 % of the 500k budget), batch 1000
  projection_hours  one paper run per env: TRPO (rollouts + the rest of each iteration) plus the
                    model fits at max_epochs (an upper bound: early stopping ends most fits sooner)

It imports neither gymnasium, MuJoCo nor dm_control (the model side needs none of them; the run
fails if one got imported). `--device cpu --quick` runs the same path at tiny sizes in seconds
(tests/test_gpu_path.py)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import bench_rollouts  # noqa: E402
from algos.config import resolve_run_config  # noqa: E402
from algos.core.ensemble import DynamicsEnsemble  # noqa: E402
from algos.core.training import ModelTrainer, StoppingRule  # noqa: E402

HEAVY = ("gymnasium", "mujoco", "dm_control")


def fit_epoch(device: torch.device, quick: bool) -> dict:
    """Seconds of one training epoch of each paper-size model (the second of two one-epoch fits)."""
    cfg = resolve_run_config("paper", "musbo", "halfcheetah", "500k", 0)
    n = 2000 if quick else int(0.85 * cfg["budget_samples"]["500k"])
    obs_dim, act_dim = 17, 6
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=g)
    data = {"obs": obs.to(device), "act": (torch.rand(n, act_dim, generator=g) * 2 - 1).to(device),
            "next_obs": (obs + 0.05 * torch.randn(n, obs_dim, generator=g)).to(device)}
    out = {"transitions": n}
    for name, probabilistic in (("dynamics", False), ("labeler", True)):
        section = cfg[name]
        hidden = [32, 32] if quick else section["hidden"]
        model = DynamicsEnsemble(obs_dim, act_dim, members=section["members"], hidden=hidden,
                                 probabilistic=probabilistic).to(device)
        trainer = ModelTrainer(lr=section["lr"], batch_size=section["batch_size"])
        seconds = []
        for _ in range(2):
            bench_rollouts._sync(device)
            t0 = time.perf_counter()
            trainer.fit(model, data, None, StoppingRule(patience=1, max_epochs=1), torch.Generator(device).manual_seed(0))
            bench_rollouts._sync(device)
            seconds.append(time.perf_counter() - t0)
        out[name] = {"members": section["members"], "hidden": hidden, "epoch_s": seconds[1],
                     "max_epochs": section["max_epochs"]}
    return out


def project(rollouts: dict, fit: dict) -> dict:
    """trpo_hours of bench_rollouts plus the fits: per deployment i of I, D_all holds i/I of the
    budget, so a run fits on (I + 1) / 2 budgets' worth of epochs per model; at max_epochs."""
    out = {}
    for env, row in rollouts["projection_hours"].items():
        cfg = resolve_run_config("paper", "musbo", env, "500k", 0)
        deployments = cfg["deployments"]
        scale = cfg["budget_samples"]["500k"] * 0.85 / fit["transitions"]
        fit_s = sum(fit[m]["epoch_s"] * fit[m]["max_epochs"] for m in ("dynamics", "labeler"))
        fit_hours = fit_s * scale * (deployments + 1) / 2 / 3600
        trpo = row.get("trpo_hours", row["rollout_hours"])
        out[env] = {**row, "model_fit_hours_upper_bound": fit_hours, "run_hours": trpo + fit_hours}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: tests the path in seconds")
    parser.add_argument("--compiled", action="store_true",
                        help="also time the torch.compile engine (each shape compiles: minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results_cuda.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch; run it on a GPU machine, or pass --device cpu")
    t0 = time.time()
    engines = ["legacy", "eager"] + (["compiled"] if args.compiled else []) + (["cuda_graph"] if device.type == "cuda" else [])
    rollouts = bench_rollouts.run(args.quick, str(device), engines=engines)
    print(f"gpu_check: rollouts and the TRPO iteration measured ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    fit = fit_epoch(device, args.quick)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    results = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "host": platform.node(), "cpu_count": os.cpu_count(), "quick": args.quick,
        "per_step_us": {shape: {e: r["wall_us_per_step"] for e, r in row["engines"].items()}
                        for shape, row in rollouts["shapes"].items()},
        "dispatch_us_per_step": {shape: {e: r["dispatch_us_per_step"] for e, r in row["engines"].items()}
                                 for shape, row in rollouts["shapes"].items()},
        "syncs_per_step": {shape: {e: r["syncs_per_step"] for e, r in row["engines"].items()}
                           for shape, row in rollouts["shapes"].items()},
        "trpo_iteration_s": rollouts["trpo_iteration"]["iteration_s"],
        "model_fit_epoch": fit,
        "projection_hours": project(rollouts, fit),
        "heavy_modules_imported": heavy,
        "seconds": time.time() - t0,
        "rollouts": rollouts,
    }
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps({k: v for k, v in results.items() if k != "rollouts"}, indent=1, default=float))
    print(f"written: {args.out}")
    if heavy:
        sys.exit(f"gpu_check: the model-side path imported {', '.join(heavy)}; it must run without them")


if __name__ == "__main__":
    main()
