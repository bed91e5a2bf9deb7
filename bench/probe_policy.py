"""Where does a finished run's last policy go: in the real env, and (MUSBO, BREMEN) in each member
of its learned dynamics? A look at model exploitation that needs the run's checkpoint (kept on
the machine that made the run; never committed).

    python bench/probe_policy.py RUN_DIR [RUN_DIR ...] [--steps 250] [--out probe.json]

From the start state of the run's first eval episode of its last deployment, the deterministic
policy (the eval policy) acts for --steps steps (at most max_episode_steps; default: TRPO's
rollout length):
- real: the env's return, its length (shorter than --steps: the episode terminated), the mean
  forward velocity and |action| over those steps, and the std of each action entry over time
  (about 0: a constant action);
- imagined (MUSBO and BREMEN; MOPO's SAC learns in its penalized model, which this does not
  replay), one row per member: the same policy closed-loop in that member alone, its states
  clamped into the box TRPO used, with the model reward and termination TRPO used.
With --steps = max_episode_steps the real return is the first eval episode's own (a check that
the probe acts as the eval did)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import read_config_file  # noqa: E402
from algos.core.model_trpo import prediction_box  # noqa: E402
from algos.core.seeding import stream_seed  # noqa: E402
from algos.rundir import latest_checkpoint  # noqa: E402
from algos.run import make_algorithm  # noqa: E402
from envs import ENV_SPECS  # noqa: E402
from envs.collector import run_episodes  # noqa: E402
from envs.model_side import model_reward, model_termination  # noqa: E402

TRPO_ALGOS = ("musbo", "bremen")  # their TRPO imagines in the raw dynamics, which the probe replays


def load(run: Path):
    """(cfg, algorithm at its last checkpoint, deployment, D_all); a one-line error for anything else."""
    if not (run / "config.yaml").is_file():
        raise SystemExit(f"probe_policy: {run} has no config.yaml; pass a run directory (results/<profile>/runs/...)")
    cfg = read_config_file(run / "config.yaml")
    _, state, batches = latest_checkpoint(run, cfg)
    if state is None:
        raise SystemExit(f"probe_policy: {run} has no checkpoint that verifies; probe it on the machine that made it")
    algo = make_algorithm(cfg, torch.device("cpu"))
    algo.load_state_dict(state["algo"])
    data = {k: np.concatenate([b[k] for b in batches]) for k in ("obs", "next_obs")}
    return cfg, algo, int(state["deployment"]), data


@torch.no_grad()
def imagine(cfg: dict, algo, obs0: np.ndarray, steps: int, box, member: int) -> dict:
    """The eval policy closed-loop in one member, from obs0, until `steps` or the model's termination."""
    policy, dynamics = algo.eval_policy(), algo.dynamics_model()
    x, ret, actions = torch.as_tensor(obs0[None]), 0.0, []
    for _ in range(steps):
        a = torch.as_tensor(np.clip(policy(x.numpy()), -1.0, 1.0), dtype=torch.float32)
        nx = dynamics.predict(x, a, member=member).next_obs[0]
        if box is not None:
            nx = torch.clamp(nx, torch.as_tensor(box[0]), torch.as_tensor(box[1]))
        ret += float(model_reward(cfg["env"], x, a, nx, algo.reward_velocity_from)[0])
        actions.append(a.numpy()[0])
        if bool(model_termination(cfg["env"], x, a, nx)[0]):
            break
        x = nx
    actions = np.array(actions)
    return {"member": member, "return": ret, "steps": len(actions), "mean_abs_action": float(np.abs(actions).mean())}


def probe(run: Path, steps: int | None = None) -> dict:
    cfg, algo, deployment, data = load(run)
    steps = min(int(steps or cfg["trpo"]["rollout_length"]), cfg["max_episode_steps"])
    episode = run_episodes(cfg["env"], algo.eval_policy(), 1, seed=stream_seed(cfg["seed"], "eval", deployment),
                           max_episode_steps=steps)[0]
    imagined = []
    if cfg["algo"] in TRPO_ALGOS:
        box = prediction_box(cfg["trpo"]["clip_predictions"], data)
        imagined = [imagine(cfg, algo, episode["obs"][0], steps, box, m) for m in range(cfg["dynamics"]["members"])]
    return {"run": str(run), "algo": cfg["algo"], "env": cfg["env"], "deployment": deployment, "steps": steps,
            "real": {"return": episode["ret"], "steps": len(episode["act"]),
                     "mean_x_velocity": float(episode["next_obs"][:, ENV_SPECS[cfg["env"]].x_velocity_index].mean()),
                     "mean_abs_action": float(np.abs(episode["act"]).mean()),
                     "action_std_over_time": float(episode["act"].std(0).mean())},
            "imagined": imagined}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, help="steps from the start state (default: TRPO's rollout length)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    torch.set_num_threads(1)
    results = [probe(run, args.steps) for run in args.runs]
    for r in results:
        real = r["real"]
        print(f"{r['run']} (deployment {r['deployment']}, {r['steps']} steps): real return {real['return']:.1f} "
              f"over {real['steps']} steps, mean forward velocity {real['mean_x_velocity']:.2f}, "
              f"mean |a| {real['mean_abs_action']:.3f}, std of a over time {real['action_std_over_time']:.3f}")
        for m in r["imagined"]:
            print(f"  member {m['member']}: imagined return {m['return']:.1f} over {m['steps']} steps, "
                  f"mean |a| {m['mean_abs_action']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
