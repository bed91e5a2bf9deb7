"""Where does a TRPO policy's progress go at the hand-off to the next deployment? Replays a run
(MUSBO or BREMEN) from scratch, exactly as `algos/run.py` does, up to deployment D's TRPO, and
there compares the policy that ended deployment D-1 (pi_prev: the eval policy of D-1, whose mean
the collection of B(D) used) with the policy TRPO is about to start from (the clone of eq. 11):

    python bench/handoff.py RUN_CONFIG [RUN_CONFIG ...] [--deployment 2] [--out handoff.json]

RUN_CONFIG: a resolved run config (results/<profile>/runs/<algo>/<env>/<budget>/seed<s>.run_config.yaml).
For each run it reports
- real: the deterministic eval return of pi_prev and of the clone on the eval episodes of
  deployment D-1 (pi_prev's is the run's own D-1 eval return: a check that the replay is the run);
- imagined: the model reward per step of each policy's mean action in the ensemble TRPO uses at D
  (and pi_prev's in the ensemble of D-1, which its TRPO optimised): TRPO's start states, rollout
  length and lanes, a member drawn per step from all of them (MUSBO's TRPO draws one per iteration);
- batch: the real reward per step of B(D) (the collecting policy, noise included) and of B(1)
  (uniform random actions), and mean |a| of B(D)'s executed actions, of pi_prev and of the clone
  on B(D)'s states;
- loss_on_newest: eq. 11's loss without weights, 1/2 ||a - pi(s)||^2 on B(D), of pi_prev (no clone
  of this batch can do much better: its actions are pi_prev's mean plus the collection noise)
  and of the clone;
- MUSBO only, newest_clone: the same eq. 11 clone (weights, holdout, early stop) of B(D) alone,
  as BREMEN clones, with its real return and imagined reward: a counterfactual, not a switch.
Nothing is written into the run's directory: the replay runs in a temporary one."""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import read_run_config  # noqa: E402
from algos.core.bc import clone_policy  # noqa: E402
from algos.core.model_trpo import make_policy  # noqa: E402
from algos.core.rollouts import gaussian_sampler, imagine  # noqa: E402
from algos.core.seeding import rngs, stream_seed  # noqa: E402
from algos.run import ALGO_CLASSES, run  # noqa: E402
from envs.collector import run_episodes  # noqa: E402
from envs.model_side import model_reward  # noqa: E402

REPLAYED = ("musbo", "bremen")  # the algorithms whose deployments end in TRPO on a cloned policy


class AtTRPO(Exception):
    """Raised in place of deployment D's TRPO: carries what the probe needs."""


def real_return(cfg: dict, policy, deployment: int) -> float:
    episodes = run_episodes(cfg["env"], policy.numpy_policy("deterministic"), cfg["eval_episodes"],
                            seed=stream_seed(cfg["seed"], "eval", deployment), max_episode_steps=cfg["max_episode_steps"])
    return float(np.mean([ep["ret"] for ep in episodes]))


@torch.no_grad()
def imagined_reward(cfg: dict, policy, dynamics, starts, box, velocity_from: str) -> float:
    """Mean model reward per step of the policy's mean action, TRPO's rollout shape, every member."""
    t = cfg["trpo"]
    _, gen = rngs(cfg["seed"], "handoff", "imagine")
    rollout = imagine(dynamics, gaussian_sampler(policy, std=0.0), torch.as_tensor(starts, dtype=torch.float32),
                      max(1, t["transitions_per_iteration"] // t["rollout_length"]), t["rollout_length"], cfg["env"],
                      gen, member_choice="per_step", clip_obs=box, restart=t["restart_terminated"],
                      reward_fn=lambda s, a, s2: model_reward(cfg["env"], s, a, s2, velocity_from=velocity_from))
    return float((rollout["rew"] * rollout["alive"]).sum() / rollout["alive"].sum())


@torch.no_grad()
def mean_abs_action(policy, obs: np.ndarray) -> float:
    return float(policy.mean_action(torch.as_tensor(obs)).abs().mean())


@torch.no_grad()
def loss_on(policy, batch: dict) -> float:
    """1/2 ||a - tanh mean||^2 on the batch (stored actions are the clipped ones). Not bc_loss: with
    BREMEN's state-dependent log-std that scores a sampled action, and this compares mean actions."""
    pred = policy.mean_action(torch.as_tensor(batch["obs"]))
    return float((0.5 * (torch.as_tensor(batch["act"]) - pred).pow(2).sum(-1)).mean())


def engine_of(run_config: Path) -> str:
    """The rollout engine the run used, so that the replay is exact: provenance.json records it per
    deployment since session 11; the runs before ran eagerly on the CPU (docs/paper_to_code.md, "The
    rollout engine on the CPU"). A run with no provenance yet (in progress): auto."""
    run_config = Path(run_config)  # <run>/config.yaml or <run>.run_config.yaml
    run_dir = (run_config.parent if run_config.name == "config.yaml"
               else Path(str(run_config).removesuffix(".run_config.yaml")))
    provenance = run_dir / "provenance.json"
    if not provenance.exists():
        return "auto"
    used = {d.get("rollout_engine") for d in json.loads(provenance.read_text())["deployments"]} - {None}
    if len(used) > 1:
        raise SystemExit(f"handoff: {provenance} records several rollout engines ({', '.join(sorted(used))}); "
                         "a replay under one of them would not be the run")
    return used.pop() if used else "eager"


def handoff(run_config: Path, deployment: int) -> dict:
    cfg = read_run_config(run_config)
    if cfg["algo"] not in REPLAYED:
        raise SystemExit(f"handoff: {run_config} is a {cfg['algo']} run; only {', '.join(REPLAYED)} clone a policy "
                         "for TRPO to start from")
    if not 2 <= deployment <= cfg["deployments"]:
        raise SystemExit(f"handoff: --deployment must be in 2..{cfg['deployments']} for {run_config}, got {deployment}")
    cfg = {**cfg, "device": "cpu", "trpo": {**cfg["trpo"], "rollout_engine": engine_of(run_config)}}
    module_name, class_name = ALGO_CLASSES[cfg["algo"]].split(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    train = cls.train
    seen: dict = {}

    def stop_at_trpo(policy, dynamics, starts, box, *args, **kwargs):
        raise AtTRPO(policy, dynamics, starts, box)

    def replayed_train(algo, dataset, d, timer):
        if d < deployment:
            return train(algo, dataset, d, timer)
        seen.update(prev=copy.deepcopy(algo.policy), prev_dynamics=copy.deepcopy(algo.dynamics_model()),
                    algo=algo, dataset=dataset)
        with mock.patch.object(module, "train_in_model", stop_at_trpo):
            try:
                train(algo, dataset, d, timer)
            except AtTRPO as at:
                seen.update(zip(("clone", "dynamics", "starts", "box"), at.args))
        raise AtTRPO()

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(cls, "train", replayed_train):
        try:
            run(cfg, Path(tmp) / f"seed{cfg['seed']}")
        except AtTRPO:
            pass
    algo, dataset = seen["algo"], seen["dataset"]
    velocity = algo.reward_velocity_from
    newest, first = dataset.newest(), dataset.all(upto=1)

    def scores(policy, dynamics) -> dict:
        return {"real_return": real_return(cfg, policy, deployment - 1),
                "imagined_reward_per_step": imagined_reward(cfg, policy, dynamics, seen["starts"], seen["box"], velocity),
                "mean_abs_action_on_newest": mean_abs_action(policy, newest["obs"]),
                "loss_on_newest": loss_on(policy, newest)}

    result = {"run_config": str(run_config), "algo": cfg["algo"], "env": cfg["env"], "seed": cfg["seed"],
              "deployment": deployment,
              "prev": {**scores(seen["prev"], seen["dynamics"]),
                       "imagined_reward_per_step_own_models": imagined_reward(
                           cfg, seen["prev"], seen["prev_dynamics"], seen["starts"], seen["box"], velocity)},
              "clone": scores(seen["clone"], seen["dynamics"]),
              "batch": {"newest_reward_per_step": float(newest["rew"].mean()),
                        "first_reward_per_step": float(first["rew"].mean()),
                        "newest_mean_abs_action": float(np.abs(newest["act"]).mean()),
                        "newest_label_mean": float(newest["labels"].mean())}}
    if cfg["algo"] == "musbo":  # the counterfactual: eq. 11's clone of B(D) alone
        _, gen = rngs(cfg["seed"], "bc", deployment)
        policy = make_policy(cfg, algo.obs_dim, algo.act_dim, torch.device("cpu"))
        train_part, holdout = dataset.split(cfg["bc"]["holdout_split"], cfg["bc"]["holdout"], gen, newest_only=True)
        clone_policy(policy, train_part, cfg, gen, all_obs=dataset.all()["obs"],
                     weighted=algo.m["uncertainty_weighting"], holdout=holdout, early_stopping=True)
        result["newest_clone"] = scores(policy, seen["dynamics"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_configs", nargs="+", type=Path)
    parser.add_argument("--deployment", type=int, default=2, help="the deployment whose hand-off is probed (>= 2)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    for path in args.run_configs:
        if not path.is_file():
            parser.error(f"{path} is not a file; pass results/<profile>/runs/<algo>/<env>/<budget>/seed<s>.run_config.yaml")
    torch.set_num_threads(1)
    results = []
    for path in args.run_configs:
        r = handoff(path, args.deployment)
        results.append(r)
        print(f"{r['algo']} {r['env']} seed {r['seed']}, hand-off to deployment {r['deployment']}: B(D) reward/step "
              f"{r['batch']['newest_reward_per_step']:.4f} (B(1) {r['batch']['first_reward_per_step']:.4f}), "
              f"mean |a| {r['batch']['newest_mean_abs_action']:.3f}")
        for who in ("prev", "clone", "newest_clone"):
            if who in r:
                s = r[who]
                print(f"  {who:12s} real {s['real_return']:8.1f}  imagined/step {s['imagined_reward_per_step']:.4f}  "
                      f"mean |a| {s['mean_abs_action_on_newest']:.3f}  loss on B(D) {s['loss_on_newest']:.3f}")
        print(f"  prev in its own models: imagined/step {r['prev']['imagined_reward_per_step_own_models']:.4f}")
        if args.out:  # after each run, so a long list keeps what it measured
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
