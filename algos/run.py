"""One run = one command:

    python -m algos.run --algo musbo --env hopper --budget 500k --seed 0 --profile mini --out DIR
    python -m algos.run --run-config FILE --out DIR [--replace-stale]     (what the workflow calls)

The deployment loop of the deployment-constrained setting (MUSBO Algorithm 1, and the same loop
for BREMEN and MOPO): collect B(i) with the deployed policy, train offline on B(1..i), evaluate.
After every finished deployment a checkpoint is written; rerunning the same command resumes
after the last finished deployment and ends with the same results (every random stream is
derived from the seed and the deployment, see algos/core/seeding.py). `metrics.csv` is written
last, so it exists only for a complete run. What the run directory promises (identity, lock,
atomic files, checksums, provenance) lives in algos/rundir.py.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import signal
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
import yaml

from algos.config import ALGOS, BUDGETS, ConfigError, read_run_config, resolve_run_config
from algos.core import preempt
from algos.core.dataset import DeploymentDataset
from algos.core.device import pick_device
from algos.core.model_eval import energy_distance, trajectory_mse
from algos.core.model_trpo import prediction_box
from algos.core.novelty import NOVELTY_COLUMNS, novelty_rows
from algos.core.rollouts import engine_fallback, engine_used
from algos.core.scalars import Scalars, trimmed_scalars
from algos.core.seeding import seed_globals, stream_seed
from algos.rundir import (RunDir, RunError, atomic_write_bytes, atomic_write_csv, check_out_arg, check_out_name,
                          check_same_host, host_record, latest_checkpoint, log, mid_checkpoint, now, save_batch,
                          save_checkpoint, save_mid_checkpoint,
                          write_error)
from envs import ENV_NAMES, ENV_SPECS
from envs.collector import collect, run_episodes

ALGO_CLASSES = {"musbo": "algos.musbo:MUSBO", "bremen": "algos.bremen:BREMEN", "mopo": "algos.mopo:MOPO"}
PHASES = ("collect", "model", "labeler", "bc", "policy", "eval")
METRIC_COLUMNS = ["deployment", "samples_total", "eval_return_mean", "eval_return_std", "eval_episodes"] + [
    f"{phase}_s" for phase in PHASES]
TRACKERS = ("tensorboard",)


# ---------------------------------------------------------------- progress
class PhaseTimer:
    """`with timer("model"):` adds the seconds to that phase and prints a progress line. A
    non-finite value raised inside a phase becomes a RunError naming the phase, deployment, seed
    and the checkpoint the run's state came from."""

    def __init__(self, tag: str, start: float, source: str = "no checkpoint (started at deployment 1)"):
        self.tag, self.start, self.source, self.seconds, self.deployment = tag, start, source, {}, 0
        self.phase, self.phase_start = "start", None

    def elapsed(self) -> dict:
        """The seconds of each phase so far, the one in progress included."""
        seconds = dict(self.seconds)
        if self.phase_start is not None:
            seconds[self.phase] += time.perf_counter() - self.phase_start
        return seconds

    def reset(self, deployment: int) -> None:
        self.deployment, self.seconds = deployment, {p: 0.0 for p in PHASES}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases are {PHASES}")
        maybe_kill_for_test(f"{phase}:{self.deployment}")
        self.phase = phase
        preempt.signal_for_test(f"{phase}:{self.deployment}")
        t0 = self.phase_start = time.perf_counter()
        try:
            yield
        except FloatingPointError as err:
            raise RunError(f"{self.tag}: non-finite value in phase={phase} deployment={self.deployment}, "
                           f"state from {self.source}: {err}") from err
        finally:
            self.phase_start = None
        dt = time.perf_counter() - t0
        self.seconds[phase] += dt
        log(f"{self.tag} deployment {self.deployment}: {phase} {dt:.1f}s (elapsed {time.time() - self.start:.0f}s)")


def maybe_kill_for_test(point: str) -> None:
    """Fault tests set MUSBO_KILL_AT=<phase>:<deployment> (or write:0) to SIGKILL the run there."""
    if os.environ.get("MUSBO_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- before any file: can this run run here?
def check_device(cfg: dict) -> torch.device:
    try:
        return pick_device(cfg["device"])
    except (ValueError, RuntimeError) as err:
        raise RunError(str(err).splitlines()[0]) from None


def array_bytes(cfg: dict) -> int:
    """The run's arrays at the end of the budget: B(1..I) as float32 obs, next_obs, act, rew, label
    and three flags per transition, held twice (the dataset and its concatenation D_all)."""
    spec = ENV_SPECS[cfg["env"]]
    per_transition = 4 * (2 * spec.obs_dim + spec.act_dim + 2) + 3
    return 2 * cfg["budget_samples"][cfg["budget"]] * per_transition


def check_memory(cfg: dict) -> None:
    need = array_bytes(cfg)
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have:
        raise RunError(f"budget_samples.{cfg['budget']}={cfg['budget_samples'][cfg['budget']]} needs about "
                       f"{need / 2**30:,.1f} GiB for its arrays alone but this machine has {have / 2**30:,.1f} GiB; "
                       f"lower budget_samples.{cfg['budget']}")


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


def check_tracking(track: str | None) -> None:
    if track == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise RunError("--track tensorboard needs the tensorboard package: pip install -e '.[track]' "
                           "(or drop --track)") from None


def open_scalars(out, done: int, track: str | None, rows: dict, next_rows: int = 0) -> Scalars:
    """The algorithm's diagnostics, file-backed: rows of deployments the run redoes are dropped,
    and torn or malformed rows with them. A file missing on a resume is rebuilt from the redone
    deployments; the ones it lacks are kept in rows["scalars_lost"] (provenance.json). next_rows:
    the rows of deployment done + 1 written before the mid-phase checkpoint the run resumes from."""
    path = out / "scalars.csv"
    if done == 0 and next_rows == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        text, dropped = trimmed_scalars(path.read_text(errors="replace"), done, next_rows)
        if dropped:
            log(f"{path}: dropped {dropped} torn or malformed row(s)")
        atomic_write_bytes(path, text.encode())
    else:
        rows["scalars_lost"] = sorted(set(rows.get("scalars_lost", [])) | set(range(1, done + 1 + (next_rows > 0))))
        log(f"{path} is missing: the rows of deployments 1-{done} are lost (noted in provenance.json); "
            f"it is rebuilt from the deployments redone")
    return Scalars(path, tensorboard_dir=out / "tensorboard" if track == "tensorboard" else None)


def run(cfg: dict, out, *, replace_stale: bool = False, allow_different_host: bool = False,
        track: str | None = None, lock_wait: float = 0.0, checkpoint_every_min: float = 0.0,
        stop_after_min: float = 0.0) -> None:
    tag = f"[{cfg['algo']} {cfg['env']} {cfg['budget']} seed{cfg['seed']}]"
    start = time.time()
    device = check_device(cfg)
    check_memory(cfg)
    check_tracking(track)
    rundir = RunDir(out, cfg, replace_stale=replace_stale, lock_wait=lock_wait)  # refuses any other run before writing
    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    if device.type == "cuda":  # CPU kernels are deterministic already; see docs/determinism.md
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    session = preempt.Session(every_min=checkpoint_every_min, stop_after_min=stop_after_min)
    try:
        with preempt.installed(session):  # SIGUSR1, SIGTERM: see algos/core/preempt.py
            deployment_loop(cfg, rundir.out, tag, start, device, allow_different_host, track, session)
    finally:
        rundir.close()


def deployment_loop(cfg, out, tag, start, device, allow_different_host, track,
                    session: preempt.Session | None = None) -> None:
    """The setting's procedure, from the newest verified checkpoint on: per deployment collect
    B(i), train offline on B(1..i), evaluate, checkpoint; then the result files. A mid-phase
    checkpoint of the next deployment (`session`, algos/core/preempt.py) is resumed inside its
    phase: its batch and labels are loaded, its training goes on where it stopped."""
    session = session or preempt.Session()
    (out / "batches").mkdir(exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())

    seed_globals(cfg["seed"], "init")  # initial weights
    algo = make_algorithm(cfg, device)
    spec = ENV_SPECS[cfg["env"]]
    dataset = DeploymentDataset(spec.obs_dim, spec.act_dim)
    path, state, batches = latest_checkpoint(out, cfg)
    mid_path, mid, mid_batches = mid_checkpoint(out, cfg, (state or {}).get("deployment", 0) + 1)
    if mid is not None:  # stopped inside the next deployment: its mid-phase checkpoint supersedes the last one
        path, state, batches = mid_path, mid, mid_batches
    done = 0
    rows = {"metrics": [], "eval": [], "model": [], "provenance": []}
    shas: list[str] = []
    source = "no checkpoint (started at deployment 1)"
    host = host_record(device)
    different_host, resumed_inside = False, None
    if state is not None:
        algo.load_state_dict(state["algo"])
        for batch, labels in zip(batches, state["labels"]):
            dataset.add(batch, labels.numpy())
        done, rows, shas = state["deployment"], json.loads(state["rows"]), list(state["batch_sha256"])
        if mid:  # the deployment in progress at the stop, and where inside it
            loop = mid["loop"]
            done, resumed_inside = done - 1, f"{mid['phase']}: {loop['name']} {loop['unit']} {loop['step']}"
        rows.setdefault("provenance", [])
        previous = mid["host"] if mid else rows["provenance"][-1] if rows["provenance"] else None
        different_host = check_same_host(previous, host, allow_different_host)
        source = f"checkpoint {path}"
        log(f"{tag} resuming after deployment {done} from {path}" if mid is None else
            f"{tag} resuming inside deployment {done + 1} ({resumed_inside}) from {path}")
    algo.scalars = open_scalars(out, done, track, rows, next_rows=mid["scalars_rows"] if mid else 0)

    def run_state(deployment: int) -> dict:  # what a checkpoint holds: the run after `deployment` (or inside it)
        return {"deployment": deployment, "algo": algo.state_dict(), "rows": json.dumps(rows),
                "batch_sha256": list(shas), "labels": [torch.as_tensor(l) for l in dataset.labels],
                "config": json.dumps(cfg, sort_keys=True)}

    def save_inside(record: dict) -> Path:  # the session's mid-phase checkpoint of the deployment in progress
        return save_mid_checkpoint(out, timer.deployment, {
            **run_state(timer.deployment), "phase": timer.phase, "loop": record, "seconds": timer.elapsed(),
            "scalars_rows": algo.scalars.deployment_rows, "started": started, "host": host})

    if done == 0 and mid is None:  # deployment 0: the uniform random policy that collects B(1), same protocol
        random_episodes = run_episodes(cfg["env"], None, cfg["eval_episodes"], seed=stream_seed(cfg["seed"], "eval", 0),
                                       max_episode_steps=cfg["max_episode_steps"])
        rows["eval"] += [{"deployment": 0, "episode": k, "return": ep["ret"]} for k, ep in enumerate(random_episodes)]
    timer = PhaseTimer(tag, start, source)
    session.save, session.where = save_inside, lambda: (timer.deployment, timer.phase)
    for deployment in range(done + 1, cfg["deployments"] + 1):
        timer.reset(deployment)
        algo.scalars.set_deployment(deployment)
        started = now()
        seed_globals(cfg["seed"], "deployment", deployment)
        if mid is None:
            with timer("collect"):
                batch = collect(cfg["env"], cfg["batch_size"], algo.collection_policy(deployment),
                                seed=stream_seed(cfg["seed"], "collect", deployment),
                                max_episode_steps=cfg["max_episode_steps"], progress=sys.stderr.isatty())
                shas.append(save_batch(out / "batches" / f"deployment_{deployment}.npz", batch))
            label_batch = getattr(algo, "label_batch", None)  # MUSBO's eq. 9, fixed on arrival
            with timer("labeler"):
                dataset.add(batch, label_batch(batch, deployment) if label_batch else None)
        else:  # resuming inside this deployment: B(i) and its labels came with the mid-phase checkpoint
            started, timer.seconds = mid["started"], dict(mid["seconds"])
            algo.scalars.deployment_rows = mid["scalars_rows"]
        session.start_deployment(deployment, mid and mid["loop"], restore=lambda m=mid: algo.load_state_dict(m["algo"]))
        mid = None
        with session.training():
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
        algo.scalars.add_many("eval", {"return_mean": returns.mean(), "return_std": returns.std(),
                                       "episode_length_mean": np.mean([len(ep["rew"]) for ep in episodes]), **{
            k: model_row[k] for k in ("energy_distance", "trajectory_mse")}})
        rows["provenance"].append({"deployment": deployment, **host, "resumed_on_different_host": different_host,
                                   "resumed_inside": resumed_inside, "rollout_engine": engine_used(),
                                   "rollout_engine_fallback": engine_fallback(),
                                   "start_time": started, "end_time": now()})
        resumed_inside = None
        log(f"{tag} deployment {deployment}/{cfg['deployments']}: eval return {returns.mean():.1f} "
            f"± {returns.std():.1f}, model energy distance {model_row['energy_distance']:.3f}")
        save_checkpoint(out, deployment, run_state(deployment))
        session.checkpointed(stop=deployment < cfg["deployments"])  # a stop asked for meanwhile stops here
    algo.scalars.close()

    provenance = {"seed": cfg["seed"], "algo": cfg["algo"], "env": cfg["env"], "budget": cfg["budget"],
                  "profile": cfg["profile"], **host, "command": sys.argv,
                  "start_time": datetime.fromtimestamp(start, timezone.utc).isoformat(), "end_time": now(),
                  "deployments": rows["provenance"], "scalars_csv_lacks_deployments": rows.get("scalars_lost", [])}
    atomic_write_bytes(out / "provenance.json", json.dumps(provenance, indent=2).encode())
    atomic_write_csv(out / "eval_returns.csv", ["deployment", "episode", "return"], rows["eval"])
    atomic_write_csv(out / "model_eval.csv", ["deployment", "energy_distance", "trajectory_mse"], rows["model"])
    # Table 1 from the batches themselves, kept small so that it can be committed without them.
    atomic_write_csv(out / "novelty.csv", list(NOVELTY_COLUMNS), novelty_rows([b["obs"] for b in dataset.batches], device))
    maybe_kill_for_test("write:0")
    atomic_write_csv(out / "metrics.csv", METRIC_COLUMNS, rows["metrics"])  # last: marks the run complete
    log(f"{tag} finished in {time.time() - start:.0f}s -> {out}")


class _Extend(argparse.Action):
    """--set a=1 b=2 --set c=3: every value after every --set."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).extend(values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m algos.run", description="One run of MUSBO, BREMEN or MOPO: "
                                     "the deployment loop, resumable, in one run directory.")
    parser.add_argument("--run-config", default=None, metavar="FILE",
                        help="a resolved run config (python -m algos.config write-run-config); replaces "
                             "--algo/--env/--budget/--seed/--profile/--set")
    parser.add_argument("--algo", choices=ALGOS)
    parser.add_argument("--env", choices=ENV_NAMES)
    parser.add_argument("--budget", choices=BUDGETS)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--profile", help="paper, mini, smoke, or the name of any config/<name>.yaml")
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--set", dest="overrides", nargs="+", action=_Extend, default=[], metavar="KEY=VALUE",
                        help="override keys of run.defaults, e.g. --set trpo.delta=0.1 dynamics.lr=3e-4 (repeatable)")
    parser.add_argument("--replace-stale", action="store_true",
                        help="(the workflow's reruns) move a run of another config in --out into "
                             "--out/stale-<hash>/ and start over")
    parser.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait at most this long for another process that holds --out's lock (the workflow: "
                             "the job's runtime); 0 (default): refuse at once")
    parser.add_argument("--allow-different-host", action="store_true",
                        help="resume although the device or effective thread count differs (recorded)")
    parser.add_argument("--track", choices=TRACKERS, default=None,
                        help="mirror scalars.csv to TensorBoard in --out/tensorboard (needs the track extra)")
    parser.add_argument("--checkpoint-every-min", type=float, default=0.0, metavar="MINUTES",
                        help="also checkpoint inside a phase this often and go on (0, default: only on SIGUSR1, "
                             "SIGTERM and after each deployment)")
    parser.add_argument("--stop-after-min", type=float, default=0.0, metavar="MINUTES",
                        help=f"after this long, checkpoint inside the phase and exit {preempt.EXIT_STOPPED} as on "
                             f"SIGUSR1 (a job under a time limit; 0, default: never)")
    args = parser.parse_args(argv)
    manual = ("algo", "env", "budget", "seed", "profile")
    if args.run_config is not None:
        given = [f"--{k}" for k in manual if getattr(args, k) is not None] + (["--set"] if args.overrides else [])
        if given:
            parser.error(f"--run-config replaces {', '.join(given)}: put them into the run config instead")
    else:
        absent = [f"--{k}" for k in manual if getattr(args, k) is None]
        if absent:
            parser.error(f"the following arguments are required: {', '.join(absent)} (or --run-config FILE)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = check_out_arg(args.out)
        if not (math.isfinite(args.lock_wait) and args.lock_wait >= 0):
            raise RunError(f"--lock-wait {args.lock_wait:g} must be a finite number of seconds >= 0")
        for flag in ("checkpoint_every_min", "stop_after_min"):
            if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) >= 0):
                raise RunError(f"--{flag.replace('_', '-')} {getattr(args, flag):g} must be a finite number of "
                               f"minutes >= 0 (0: off)")
        if args.run_config is not None:
            cfg = read_run_config(args.run_config)
        else:
            cfg = resolve_run_config(args.profile, args.algo, args.env, args.budget, args.seed, args.overrides)
        check_out_name(out, cfg["seed"])
        run(cfg, out, replace_stale=args.replace_stale, allow_different_host=args.allow_different_host,
            track=args.track, lock_wait=args.lock_wait, checkpoint_every_min=args.checkpoint_every_min,
            stop_after_min=args.stop_after_min)
    except preempt.Stopped as stop:  # its state is saved: rerunning the same command resumes
        print(stop, file=sys.stderr)
        return preempt.EXIT_STOPPED
    except (ConfigError, RunError, preempt.ResumeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a full disk while appending scalars.csv (atomic writes say so themselves)
        print(f"error: {write_error(err.filename or args.out, err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
