"""One run = one command:

    python -m algos.run --algo musbo --env hopper --budget 500k --seed 0 --profile mini --out DIR

The deployment loop of the deployment-constrained setting (MUSBO Algorithm 1, and the same loop
for BREMEN and MOPO): collect B(i) with the deployed policy, train offline on B(1..i), evaluate.
After every finished deployment a checkpoint is written; rerunning the same command resumes
after the last finished deployment and ends with the same results (every random stream is
derived from the seed and the deployment, see algos/core/seeding.py). `metrics.csv` is written
last, so it exists only for a complete run.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml

from algos.config import ALGOS, BUDGETS, PROFILES, ConfigError, resolve_run_config
from algos.core.dataset import DeploymentDataset
from algos.core.device import pick_device
from algos.core.model_eval import energy_distance, trajectory_mse
from algos.core.model_trpo import prediction_box
from algos.core.novelty import cosine_novelty_per_deployment
from algos.core.seeding import seed_globals, stream_seed
from envs import ENV_NAMES, ENV_SPECS
from envs.collector import collect, run_episodes

ALGO_CLASSES = {"musbo": "algos.musbo:MUSBO", "bremen": "algos.bremen:BREMEN", "mopo": "algos.mopo:MOPO"}
PHASES = ("collect", "model", "labeler", "bc", "policy", "eval")
METRIC_COLUMNS = ["deployment", "samples_total", "eval_return_mean", "eval_return_std", "eval_episodes"] + [
    f"{phase}_s" for phase in PHASES]
BATCH_KEYS = ("obs", "act", "rew", "next_obs", "terminated", "truncated", "episode_start")
PACKAGES = ("torch", "numpy", "gymnasium", "mujoco", "dm-control", "scipy", "pandas", "snakemake")


class RunError(RuntimeError):
    """A run that cannot go on; the message names the phase, deployment and seed."""


# ---------------------------------------------------------------- atomic files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def save_batch(path: Path, batch: dict) -> str:
    """Writes the npz atomically and returns its sha256 (kept in the checkpoint)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: batch[k] for k in BATCH_KEYS})
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_batch(path: Path, sha256: str) -> dict | None:
    """The batch, or None if it is missing or does not match its checksum."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in BATCH_KEYS}


# ---------------------------------------------------------------- progress
class PhaseTimer:
    """`with timer("model"):` adds the seconds to that phase and prints a progress line."""

    def __init__(self, tag: str, start: float):
        self.tag, self.start, self.seconds, self.deployment = tag, start, {}, 0

    def reset(self, deployment: int) -> None:
        self.deployment, self.seconds = deployment, {p: 0.0 for p in PHASES}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases are {PHASES}")
        maybe_kill_for_test(f"{phase}:{self.deployment}")
        t0 = time.perf_counter()
        try:
            yield
        except FloatingPointError as err:
            raise RunError(f"{self.tag}: non-finite value in phase={phase} deployment={self.deployment}: {err}") from err
        dt = time.perf_counter() - t0
        self.seconds[phase] += dt
        log(f"{self.tag} deployment {self.deployment}: {phase} {dt:.1f}s (elapsed {time.time() - self.start:.0f}s)")


def maybe_kill_for_test(point: str) -> None:
    """Fault tests set MUSBO_KILL_AT=<phase>:<deployment> (or write:0) to SIGKILL the run there."""
    if os.environ.get("MUSBO_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- provenance
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ---------------------------------------------------------------- the run
def make_algorithm(cfg: dict, device: torch.device):
    module, cls = ALGO_CLASSES[cfg["algo"]].split(":")
    spec = ENV_SPECS[cfg["env"]]
    return getattr(importlib.import_module(module), cls)(cfg["env"], cfg, spec.obs_dim, spec.act_dim, device, cfg["seed"])


def evaluate(cfg: dict, algo, deployment: int, box: tuple | None) -> tuple[list[dict], dict]:
    """Eval returns of the deterministic policy, and the Fig. 6 model accuracy: the first
    `model_eval_episodes` real episodes replayed open-loop in the learned model (ensemble mean,
    predicted states clamped into `box`: prediction_box(cfg["model_eval_box"], D_all))."""
    episodes = run_episodes(cfg["env"], algo.eval_policy(), cfg["eval_episodes"],
                            seed=stream_seed(cfg["seed"], "eval", deployment),
                            max_episode_steps=cfg["max_episode_steps"])
    replayed = episodes[: cfg["model_eval_episodes"]]
    model = algo.dynamics_model()
    imagined = [None] * len(replayed)
    for length in sorted({len(ep["act"]) for ep in replayed}):  # equal lengths replay as one batch
        group = [k for k, ep in enumerate(replayed) if len(ep["act"]) == length]
        with torch.no_grad():
            pred = model.predict_trajectory(np.stack([replayed[k]["obs"][0] for k in group]),
                                            np.stack([replayed[k]["act"] for k in group]), clip_obs=box)
        for k, p in zip(group, pred.cpu().numpy()):
            imagined[k] = p
    real = [ep["next_obs"] for ep in replayed]
    real_all, imagined_all = np.concatenate(real), np.concatenate(imagined)
    if not np.all(np.isfinite(imagined_all)):
        raise FloatingPointError("model replay produced non-finite states")
    model_row = {"deployment": deployment,
                 "energy_distance": energy_distance(imagined_all, real_all),
                 "trajectory_mse": trajectory_mse(imagined, real)}
    return episodes, model_row


def latest_checkpoint(out: Path, cfg: dict):
    """The newest checkpoint that loads and whose batches all match their checksums."""
    ckpt_dir = out / "checkpoints"
    if not ckpt_dir.is_dir():
        return None, []
    for path in sorted(ckpt_dir.glob("deployment_*.pt"), key=lambda p: -int(p.stem.split("_")[1])):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or corrupted file: fall back to the one before
            log(f"checkpoint {path} is unreadable ({type(err).__name__}); falling back")
            continue
        if state.get("config") != json.dumps(cfg, sort_keys=True):
            raise RunError(f"{out} holds a run with a different configuration; use another --out "
                           f"or delete {out} to start over")
        batches = [load_batch(out / "batches" / f"deployment_{i + 1}.npz", sha)
                   for i, sha in enumerate(state["batch_sha256"])]
        if any(b is None for b in batches):
            log(f"a batch of {path.name} is missing or corrupted; redoing from an earlier deployment")
            continue
        return state, batches
    return None, []


def run(cfg: dict, out: Path) -> None:
    tag = f"[{cfg['algo']} {cfg['env']} {cfg['budget']} seed{cfg['seed']}]"
    start = time.time()
    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    device = pick_device(cfg["device"])
    if device.type == "cuda":  # CPU kernels are deterministic already; see docs/determinism.md
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    (out / "batches").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())

    seed_globals(cfg["seed"], "init")  # initial weights
    algo = make_algorithm(cfg, device)
    spec = ENV_SPECS[cfg["env"]]
    dataset = DeploymentDataset(spec.obs_dim, spec.act_dim)
    state, batches = latest_checkpoint(out, cfg)
    done = 0
    rows = {"metrics": [], "eval": [], "model": []}
    shas: list[str] = []
    if state is not None:
        algo.load_state_dict(state["algo"])
        for batch, labels in zip(batches, state["labels"]):
            dataset.add(batch, labels.numpy())
        done, rows, shas = state["deployment"], json.loads(state["rows"]), list(state["batch_sha256"])
        log(f"{tag} resuming after deployment {done} from {out / 'checkpoints'}")

    if done == 0:  # deployment 0: the uniform random policy that collects B(1), same protocol
        random_episodes = run_episodes(cfg["env"], None, cfg["eval_episodes"], seed=stream_seed(cfg["seed"], "eval", 0),
                                       max_episode_steps=cfg["max_episode_steps"])
        rows["eval"] += [{"deployment": 0, "episode": k, "return": ep["ret"]} for k, ep in enumerate(random_episodes)]
    timer = PhaseTimer(tag, start)
    for deployment in range(done + 1, cfg["deployments"] + 1):
        timer.reset(deployment)
        seed_globals(cfg["seed"], "deployment", deployment)
        with timer("collect"):
            batch = collect(cfg["env"], cfg["batch_size"], algo.collection_policy(deployment),
                            seed=stream_seed(cfg["seed"], "collect", deployment),
                            max_episode_steps=cfg["max_episode_steps"], progress=sys.stderr.isatty())
            shas.append(save_batch(out / "batches" / f"deployment_{deployment}.npz", batch))
        label_batch = getattr(algo, "label_batch", None)  # MUSBO's eq. 9, fixed on arrival
        with timer("labeler"):
            dataset.add(batch, label_batch(batch, deployment) if label_batch else None)
        algo.train(dataset, deployment, timer)
        with timer("eval"):
            data = dataset.all()
            episodes, model_row = evaluate(cfg, algo, deployment, prediction_box(cfg["model_eval_box"], data))
        returns = np.array([ep["ret"] for ep in episodes])
        rows["metrics"].append({"deployment": deployment, "samples_total": len(dataset),
                                "eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
                                "eval_episodes": len(returns),
                                **{f"{p}_s": round(timer.seconds[p], 3) for p in PHASES}})
        rows["eval"] += [{"deployment": deployment, "episode": k, "return": float(r)} for k, r in enumerate(returns)]
        rows["model"].append(model_row)
        log(f"{tag} deployment {deployment}/{cfg['deployments']}: eval return {returns.mean():.1f} "
            f"± {returns.std():.1f}, model energy distance {model_row['energy_distance']:.3f}")
        checkpoint = {"deployment": deployment, "algo": algo.state_dict(), "rows": json.dumps(rows),
                      "batch_sha256": shas, "labels": [torch.as_tensor(l) for l in dataset.labels],
                      "config": json.dumps(cfg, sort_keys=True)}
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(out / "checkpoints" / f"deployment_{deployment}.pt", buf.getvalue())
        for old in (out / "checkpoints").glob("deployment_*.pt"):  # keep the two newest
            if int(old.stem.split("_")[1]) < deployment - 1:
                old.unlink()

    provenance = {"git_commit": git_commit(), "packages": package_versions(), "device": str(device),
                  "seed": cfg["seed"], "algo": cfg["algo"], "env": cfg["env"], "budget": cfg["budget"],
                  "profile": cfg["profile"], "host": platform.node(), "command": sys.argv,
                  "start_time": datetime.fromtimestamp(start, timezone.utc).isoformat(),
                  "end_time": datetime.now(timezone.utc).isoformat()}
    atomic_write_bytes(out / "provenance.json", json.dumps(provenance, indent=2).encode())
    atomic_write_csv(out / "eval_returns.csv", ["deployment", "episode", "return"], rows["eval"])
    atomic_write_csv(out / "model_eval.csv", ["deployment", "energy_distance", "trajectory_mse"], rows["model"])
    # Table 1 from the batches themselves, kept small so that it can be committed without them.
    novelty = cosine_novelty_per_deployment([b["obs"] for b in dataset.batches]) if len(dataset.batches) > 1 else []
    atomic_write_csv(out / "novelty.csv", ["deployment", "cosine_similarity"],
                     [{"deployment": i, "cosine_similarity": v} for i, v in enumerate(novelty, start=2)])
    maybe_kill_for_test("write:0")
    atomic_write_csv(out / "metrics.csv", METRIC_COLUMNS, rows["metrics"])  # last: marks the run complete
    log(f"{tag} finished in {time.time() - start:.0f}s -> {out}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m algos.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True, choices=ALGOS)
    parser.add_argument("--env", required=True, choices=ENV_NAMES)
    parser.add_argument("--budget", required=True, choices=BUDGETS)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key of run.defaults, e.g. --set trpo.delta=0.1 (repeatable)")
    return parser.parse_args(argv)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunError(f"output directory {out} is not writable ({err.strerror}); choose another --out") from err


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_run_config(args.profile, args.algo, args.env, args.budget, args.seed, args.overrides)
        check_writable(args.out)
        run(cfg, args.out)
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
