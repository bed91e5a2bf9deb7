"""Calibration against trusted implementations (issue 20): the project's TRPO update and its SAC
on the real Hopper-v5 and HalfCheetah-v5, each beside a trusted implementation of the same
algorithm (sb3-contrib's TRPO, Stable-Baselines3's SAC) with the hyperparameters mapped.

    python bench/calibrate.py [--algos trpo sac] [--envs hopper halfcheetah] [--sac-envs halfcheetah]
        [--seeds 0 1 2] [--trpo-steps 300000] [--sac-steps 50000] [--jobs 2]
        [--out bench/calibration.json] [--figure paper_figures/calibration.pdf]
    python bench/calibrate.py --tiny     # seconds per run: the smoke test, and the speeds behind the estimate

`make calibrate` runs the full size (needs the `calibrate` extra: sb3-contrib, stable-baselines3).

Pass rule (fixed before any run; a fail is diagnosed afterwards, never tuned away):
    pass when the project's final mean return (the mean over seeds of the last evaluation point)
    lies inside the peer's 95 % percentile-bootstrap CI of its final mean return, or above it;
    fail when it lies below the CI.

What runs (every implementation gets the same env steps and the same evaluation: the
deterministic mean action, `eval_episodes` episodes with the same reset seeds, at the same step
counts; one torch thread each; CPU time per run):
- TRPO, project ("project-linear", "project-mlp"): the loop of this file around the functions
  MUSBO and BREMEN call, algos.core.trpo.policy_update and make_baseline with the linear and
  with the mlp baseline, the policy of algos.core.model_trpo.make_policy. Each iteration samples
  `trpo_batch` real env steps with the policy's own std (GaussianPolicy.numpy_policy
  "stochastic": standard TRPO sampling, not BREMEN's fixed-std sampling of imagined rollouts),
  stores the unclipped sampled action and steps the env with it clipped to [-1, 1]; episodes go
  on from one batch into the next. The batch is one [T, 1] lane for policy_update: a time-limit
  truncation ends a path like a termination, timestep counts the steps since the episode began.
- TRPO, peer ("sb3-contrib"): sb3_contrib.TRPO on the same env (envs.make_env) in VecNormalize.
- SAC, project ("project"): algos.core.sac.SAC and ReplayBuffer with MOPO's settings; the first
  `sac_learning_starts` steps take uniform random actions, then one update per env step.
- SAC, project with SB3's numerics ("project-sb3-numerics", the diagnostic of the SAC fail): the
  same, with nn.Linear's initialisation and the log-determinant log(1 - tanh(u)^2 + 1e-6); and
  "project-sb3-log-det": the log-determinant alone.
- SAC, peer ("stable-baselines3"): stable_baselines3.SAC with the same settings and schedule.
The hyperparameters come from config/paper.yaml (BREMEN's trpo and policy sections, MOPO's SAC
keys); what could not be mapped is DIFFERENCES, printed, written to the JSON and in the README.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import envs  # noqa: E402
from algos.config import resolve_run_config  # noqa: E402
from algos.core.bc import normalizer_moments  # noqa: E402
from algos.core.model_trpo import make_policy  # noqa: E402
from algos.core.sac import SAC, ReplayBuffer  # noqa: E402
from algos.core.seeding import rngs, seed_globals, stream_seed  # noqa: E402
from algos.core.trpo import make_baseline, policy_update  # noqa: E402
from analysis.metrics import bootstrap_ci  # noqa: E402
from analysis.output import fmt_interval, write_bytes, write_text  # noqa: E402
from envs.collector import reset_seed, run_episodes  # noqa: E402

PASS_RULE = ("pass when the project's final mean return (the mean over seeds of the last evaluation point) "
             "lies inside the peer's 95 % percentile-bootstrap CI of its final mean return, or above it; "
             "fail when it lies below the CI")
IMPLEMENTATIONS = {"trpo": ("project-linear", "project-mlp", "sb3-contrib"),
                   "sac": ("project", "project-sb3-numerics", "project-sb3-log-det", "stable-baselines3")}
# The diagnostic rows of the SAC fail (3 seeds: 2473 against 3339 [3215, 3428]): the project's SAC
# with the two numerical choices that Stable-Baselines3 makes differently and that algos.core.sac
# keeps as switches (SAC(init=..., log_det=...)), both (project-sb3-numerics) or the log-determinant
# alone (project-sb3-log-det); everything else as "project"
SAC_SWITCHES = {"project": {}, "project-sb3-numerics": {"init": "torch_default", "log_det": "sb3_epsilon"},
                "project-sb3-log-det": {"log_det": "sb3_epsilon"}}
PEER = {"trpo": "sb3-contrib", "sac": "stable-baselines3"}
ALGOS = tuple(IMPLEMENTATIONS)
ENVS = ("hopper", "halfcheetah")
# sizes: the minimum (300k TRPO steps, 50k SAC steps, 10 episodes); --tiny: seconds per run
# with the full TRPO batch, so that its speeds are the full run's
FULL = {"trpo_steps": 300_000, "trpo_batch": 2000, "trpo_eval_every": 20_000, "sac_steps": 50_000,
        "sac_learning_starts": 5000, "sac_eval_every": 5000, "eval_episodes": 10}
TINY = {"trpo_steps": 4000, "trpo_batch": 2000, "trpo_eval_every": 2000, "sac_steps": 1000,
        "sac_learning_starts": 200, "sac_eval_every": 500, "eval_episodes": 2}
DEFAULT_OUT = {False: ("bench/calibration.json", "paper_figures/calibration.pdf"),
               True: ("bench/tmp/calibration_tiny.json", "bench/tmp/calibration_tiny.pdf")}
# the calibration's own choices where the run config has no real-env counterpart; the same on both sides
LINE_SEARCH, LINE_SEARCH_DECAY = "kl_backtrack", 0.8   # sb3-contrib's rule and shrinking factor
INIT_LOG_STD = 0.0                                      # sb3's log_std_init default
DIFFERENCES = [
    "TRPO: KL direction: the project constrains the mean KL(pi_old || pi_new), sb3-contrib the mean "
    "KL(pi_new || pi_old); both have the same Fisher matrix at the old policy, they differ in the line "
    "search's KL test.",
    "TRPO: Fisher-vector products: the project's Gauss-Newton form with the step scaled by x.g, sb3-contrib's "
    "double backward through the KL with the step scaled by x.Fx (equal up to conjugate gradient's residual).",
    "TRPO: policy mean: the project's tanh(MLP(s)) is bounded to [-1, 1], sb3-contrib's linear output is "
    "unbounded; both clip the sampled action to [-1, 1] in the env and store it unclipped.",
    "TRPO: log-std: both state-independent (the project's `global` regime, floored at policy.min_log_std; "
    "sb3 unbounded); MUSBO's and BREMEN's paper config uses BREMEN's state-dependent head, not calibrated here.",
    "TRPO: value function of project-linear: BREMEN's linear baseline (ridge regression on [o, o^2, t, t^2, t^3, 1]); "
    "sb3-contrib has no linear baseline, its MLP critic is the peer of both project variants.",
    "TRPO: value function of project-mlp: inputs (s, t/1000) and return targets standardised with its first "
    "fit's statistics; sb3-contrib's critic reads the normalised observation only and fits raw returns.",
    "TRPO: path ends: the project (trpo.bootstrap_cutoff false, BREMEN's rule) takes the value after every path "
    "end as 0, time-limit truncations and the batch's end included; sb3-contrib bootstraps V(s) at both.",
    "TRPO: observation normalisation: the project's running moments (bc.normalizer_moments, variance floor "
    "bc.obs_var_floor) of every state seen before the iteration, fixed while it samples and updates, no clip; "
    "VecNormalize updates its moments at every step and clips the normalised observation to +-10.",
    "TRPO: advantage normalisation divides by the population std (project) or the sample std (sb3-contrib); "
    "the line search accepts KL <= delta (project) or KL < delta (sb3-contrib).",
    "SAC: update order: the project computes the three losses from the parameters before the step and takes one "
    "Adam step (softlearning's single session.run); sb3 steps alpha, then the critics, then the actor against "
    "the updated critics.",
    "SAC: initialisation: Glorot-uniform weights and zero biases (the project, as softlearning's Keras layers), "
    "PyTorch's default init (sb3); tanh's log-determinant exact (project) or log(1 - tanh(u)^2 + 1e-6) (sb3).",
    "Both: the random streams differ (initial weights, sampling noise, the peers' env reset seeds); only the "
    "evaluation episodes share their reset seeds.",
]


class CalibrationError(ValueError):
    """Bad input or a missing package: one line naming the problem and the fix."""


# ---------------------------------------------------------------- hyperparameters: one source for both sides
def trpo_hyperparameters(env_name: str) -> dict:
    """BREMEN's trpo and policy sections of config/paper.yaml for `env_name`, plus the calibration's choices
    (line search, log-std regime and init), and the numbers both sides read."""
    cfg = resolve_run_config("paper", "bremen", env_name, "500k", 0)
    t, p = cfg["trpo"], cfg["policy"]
    if t["fvp_subsample"] != 1.0:
        raise CalibrationError(f"trpo.fvp_subsample is {t['fvp_subsample']}; sb3-contrib subsamples the whole "
                               "batch, not only the Fisher-vector products: calibrate with 1.0")
    return {"gamma": cfg["gamma"], "delta": t["delta"], "gae_lambda": t["gae_lambda"], "cg_iters": t["cg_iters"],
            "cg_damping": t["cg_damping"], "line_search": LINE_SEARCH, "line_search_decay": LINE_SEARCH_DECAY,
            "line_search_steps": t["line_search_steps"], "normalize_advantages": t["normalize_advantages"],
            "bootstrap_cutoff": t["bootstrap_cutoff"], "fvp_subsample": t["fvp_subsample"],
            "policy_hidden": list(p["hidden"]), "policy_log_std": "global", "init_log_std": INIT_LOG_STD,
            "min_log_std": p["min_log_std"], "max_log_std": p["max_log_std"],
            "baseline_time_scale": t["baseline_time_scale"], "baseline_normalize_obs": t["baseline_normalize_obs"],
            "value_hidden": list(t["value_hidden"]), "value_lr": t["value_lr"], "value_epochs": t["value_epochs"],
            "value_batch_size": t["value_batch_size"], "obs_var_floor": cfg["bc"]["obs_var_floor"]}


def sac_hyperparameters(env_name: str) -> dict:
    """MOPO's SAC keys of config/paper.yaml for `env_name` (target entropy resolved to a number)."""
    cfg = resolve_run_config("paper", "mopo", env_name, "500k", 0)
    m = cfg["mopo"]
    act_dim = envs.get_spec(env_name).act_dim
    target = -act_dim if m["target_entropy"] == "minus_act_dim" else float(m["target_entropy"])
    return {"gamma": cfg["gamma"], "hidden": list(m["sac_hidden"]), "lr": m["sac_lr"], "tau": m["sac_tau"],
            "batch_size": m["sac_batch_size"], "target_entropy": target}


def sb3_trpo_kwargs(hp: dict, batch: int) -> dict:
    """sb3_contrib.TRPO's arguments for the same numbers (the mapping; DIFFERENCES lists what has none)."""
    return dict(n_steps=batch, gamma=hp["gamma"], gae_lambda=hp["gae_lambda"], target_kl=hp["delta"],
                cg_max_steps=hp["cg_iters"], cg_damping=hp["cg_damping"], line_search_max_iter=hp["line_search_steps"],
                line_search_shrinking_factor=hp["line_search_decay"], normalize_advantage=hp["normalize_advantages"],
                sub_sampling_factor=1, learning_rate=hp["value_lr"], n_critic_updates=hp["value_epochs"],
                batch_size=hp["value_batch_size"],
                policy_kwargs=dict(net_arch=dict(pi=hp["policy_hidden"], vf=hp["value_hidden"]),
                                   activation_fn=torch.nn.ReLU, ortho_init=False, log_std_init=hp["init_log_std"],
                                   optimizer_kwargs=dict(eps=1e-8)))


def sb3_sac_kwargs(hp: dict, sizes: dict) -> dict:
    return dict(learning_rate=hp["lr"], buffer_size=sizes["sac_steps"], learning_starts=sizes["sac_learning_starts"],
                batch_size=hp["batch_size"], tau=hp["tau"], gamma=hp["gamma"], train_freq=1, gradient_steps=1,
                ent_coef="auto", target_entropy=hp["target_entropy"], policy_kwargs=dict(net_arch=hp["hidden"]))


def mapping_rows(hyper: dict, sizes: dict) -> list[tuple[str, str, str]]:
    """(what, project, peer) for the printout: the mapped hyperparameters, per algorithm and env."""
    rows = []
    for env_name, hp in hyper.get("trpo", {}).items():
        rows += [(f"trpo {env_name}: samples per iteration", str(sizes["trpo_batch"]),
                  f"n_steps={sizes['trpo_batch']}"),
                 (f"trpo {env_name}: delta", str(hp["delta"]), f"target_kl={hp['delta']}"),
                 (f"trpo {env_name}: CG iterations, damping", f"{hp['cg_iters']}, {hp['cg_damping']}",
                  f"cg_max_steps={hp['cg_iters']}, cg_damping={hp['cg_damping']}"),
                 (f"trpo {env_name}: gamma, GAE lambda", f"{hp['gamma']}, {hp['gae_lambda']}",
                  f"gamma={hp['gamma']}, gae_lambda={hp['gae_lambda']}"),
                 (f"trpo {env_name}: line search", f"{hp['line_search']} x{hp['line_search_decay']}, "
                  f"{hp['line_search_steps']} tries", f"shrinking {hp['line_search_decay']}, "
                  f"{hp['line_search_steps']} tries"),
                 (f"trpo {env_name}: policy", f"{hp['policy_hidden']} ReLU, log-std init {hp['init_log_std']}",
                  f"pi={hp['policy_hidden']} ReLU, log_std_init={hp['init_log_std']}, ortho_init=False"),
                 (f"trpo {env_name}: value net (mlp)", f"{hp['value_hidden']} ReLU, Adam {hp['value_lr']}, "
                  f"{hp['value_epochs']} epochs x batch {hp['value_batch_size']}",
                  f"vf={hp['value_hidden']} ReLU, lr {hp['value_lr']}, n_critic_updates={hp['value_epochs']}, "
                  f"batch_size={hp['value_batch_size']}"),
                 (f"trpo {env_name}: observation normalisation", "running moments", "VecNormalize(norm_obs)")]
    for env_name, hp in hyper.get("sac", {}).items():
        rows.append((f"sac {env_name}", f"{hp['hidden']}, lr {hp['lr']}, tau {hp['tau']}, batch {hp['batch_size']}, "
                     f"auto alpha, target entropy {hp['target_entropy']}", "the same arguments"))
    return rows


# ---------------------------------------------------------------- the real env and the evaluation
class RealEnv:
    """One real environment stepped across calls: an episode goes on from one batch into the next
    (as in sb3's rollouts). The collector's loop: the unwrapped env with its own 1000-step limit,
    episode k reset with envs.collector.reset_seed(seed, k)."""

    def __init__(self, env_name: str, seed: int):
        self.spec = envs.get_spec(env_name)
        self.env = envs.make_env(env_name, env_checker=False).unwrapped
        self.seed, self.episode, self.t = int(seed), 0, 0
        self.obs, _ = self.env.reset(seed=reset_seed(self.seed, 0))

    def steps(self, act_fn, n: int) -> dict:
        """n steps of act_fn (obs [1, d] -> action [1, a]); the action is stored as given and
        stepped clipped to [-1, 1]. path_end: terminated or cut by the time limit."""
        d, a = self.spec.obs_dim, self.spec.act_dim
        out = {"obs": np.empty((n, d), np.float32), "act": np.empty((n, a), np.float32), "rew": np.empty(n, np.float32),
               "next_obs": np.empty((n, d), np.float32), "terminated": np.zeros(n, bool), "path_end": np.zeros(n, bool),
               "timestep": np.empty(n, np.int64)}
        for i in range(n):
            out["obs"][i], out["timestep"][i] = self.obs, self.t
            out["act"][i] = np.asarray(act_fn(out["obs"][i:i + 1]))[0]
            self.obs, r, term, _, _ = self.env.step(np.clip(out["act"][i], -1.0, 1.0))
            self.t += 1
            out["rew"][i], out["next_obs"][i], out["terminated"][i] = r, self.obs, term
            out["path_end"][i] = term or self.t >= envs.MAX_EPISODE_STEPS
            if out["path_end"][i]:
                self.episode, self.t = self.episode + 1, 0
                self.obs, _ = self.env.reset(seed=reset_seed(self.seed, self.episode))
        return out


class Evaluator:
    """The one evaluation of every implementation: at each multiple of `every` env steps (0 and
    the last included), `episodes` episodes of the deterministic policy with the reset seeds of
    `seed` (the same for every implementation at a seed). Keeps the CPU time it spends."""

    def __init__(self, job: dict, every: int, total: int, episodes: int):
        self.job, self.every, self.total, self.episodes = job, int(every), int(total), int(episodes)
        self.seed = stream_seed(job["seed"], "calibrate", "eval", job["env"])
        self.points, self.cpu_seconds, self.env_steps = [], 0.0, 0

    def maybe(self, steps: int, make_policy_fn) -> None:
        """Evaluate the policy make_policy_fn() builds if `steps` is an evaluation point not yet done."""
        if steps % self.every or (self.points and self.points[-1]["steps"] >= steps):
            return
        t0 = time.process_time()
        episodes = run_episodes(self.job["env"], make_policy_fn(), self.episodes, self.seed)
        self.cpu_seconds += time.process_time() - t0
        self.env_steps += sum(len(e["rew"]) for e in episodes)
        returns = [e["ret"] for e in episodes]
        self.points.append({"steps": int(steps), "returns": returns, "mean": float(np.mean(returns))})
        log(f"  {job_name(self.job)}: {steps}/{self.total} steps, eval return {np.mean(returns):.1f}")


# ---------------------------------------------------------------- the four implementations
def run_project_trpo(job: dict, sizes: dict, hp: dict, ev: Evaluator) -> None:
    spec, n = envs.get_spec(job["env"]), sizes["trpo_batch"]
    seed_globals(job["seed"], "calibrate", "trpo", job["env"])     # the same initial policy for both baselines
    _, gen = rngs(job["seed"], "calibrate", "trpo", job["env"])
    policy = make_policy({"policy": {"hidden": hp["policy_hidden"], "log_std": hp["policy_log_std"],
                                     "init_log_std": hp["init_log_std"], "min_log_std": hp["min_log_std"],
                                     "max_log_std": hp["max_log_std"]}}, spec.obs_dim, spec.act_dim, "cpu")
    kind = job["implementation"].removeprefix("project-")
    baseline = make_baseline(kind, spec.obs_dim, hp, normalize=policy.normalize)
    env = RealEnv(job["env"], stream_seed(job["seed"], "calibrate", "train", job["env"]))
    seen = []
    ev.maybe(0, lambda: policy.numpy_policy("deterministic"))
    for it in range(sizes["trpo_steps"] // n):
        if seen:  # the normaliser moves between iterations only: sampling and update see one policy
            policy.set_obs_normalizer(*normalizer_moments(np.concatenate(seen), hp["obs_var_floor"]))
        sample = policy.numpy_policy("stochastic", seed=stream_seed(job["seed"], "calibrate", "sample", it), clip=False)
        batch = env.steps(sample, n)
        seen.append(batch["obs"])
        lane = {k: batch[k][:, None] for k in ("obs", "act", "rew", "next_obs", "timestep")}
        lane["terminated"] = batch["path_end"][:, None]
        policy_update(policy, baseline, lane, gamma=hp["gamma"], lam=hp["gae_lambda"],
                      normalize_advantages=hp["normalize_advantages"], delta=hp["delta"], cg_iters=hp["cg_iters"],
                      cg_damping=hp["cg_damping"], line_search_steps=hp["line_search_steps"],
                      line_search_decay=hp["line_search_decay"], line_search=hp["line_search"],
                      bootstrap_cutoff=hp["bootstrap_cutoff"], fvp_subsample=hp["fvp_subsample"], generator=gen)
        ev.maybe((it + 1) * n, lambda: policy.numpy_policy("deterministic"))


def _eval_callback(ev: Evaluator, make_policy_fn):
    """An sb3 callback that evaluates at the start of each rollout, i.e. after the update on the steps so far."""
    from stable_baselines3.common.callbacks import BaseCallback

    class EvalAtSteps(BaseCallback):
        def _on_rollout_start(self) -> None:
            ev.maybe(self.num_timesteps, make_policy_fn)

        def _on_step(self) -> bool:
            return True
    return EvalAtSteps()


def run_sb3_trpo(job: dict, sizes: dict, hp: dict, ev: Evaluator) -> None:
    from sb3_contrib import TRPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    venv = VecNormalize(DummyVecEnv([lambda: envs.make_env(job["env"])]), norm_obs=True, norm_reward=False,
                        gamma=hp["gamma"])
    model = TRPO("MlpPolicy", venv, seed=job["seed"], device="cpu", **sb3_trpo_kwargs(hp, sizes["trpo_batch"]))

    def deterministic():
        return lambda obs: model.predict(venv.normalize_obs(obs), deterministic=True)[0]
    model.learn(sizes["trpo_steps"], callback=_eval_callback(ev, deterministic))
    ev.maybe(model.num_timesteps, deterministic)


def run_project_sac(job: dict, sizes: dict, hp: dict, ev: Evaluator) -> None:
    spec = envs.get_spec(job["env"])
    _, gen = rngs(job["seed"], "calibrate", "sac", job["env"])
    sac = SAC(spec.obs_dim, spec.act_dim, hidden=hp["hidden"], lr=hp["lr"], tau=hp["tau"], gamma=hp["gamma"],
              batch_size=hp["batch_size"], target_entropy=hp["target_entropy"], device="cpu", generator=gen,
              **SAC_SWITCHES[job["implementation"]])
    buffer = ReplayBuffer(sizes["sac_steps"], spec.obs_dim, spec.act_dim)
    env = RealEnv(job["env"], stream_seed(job["seed"], "calibrate", "train", job["env"]))
    rng = np.random.default_rng(stream_seed(job["seed"], "calibrate", "warmup", job["env"]))

    def uniform(obs):
        return rng.uniform(-1.0, 1.0, (1, spec.act_dim)).astype(np.float32)

    def explore(obs):
        return sac.act(obs, deterministic=False)
    ev.maybe(0, lambda: sac.numpy_policy(deterministic=True))
    for step in range(1, sizes["sac_steps"] + 1):     # sb3's schedule: random while step <= learning_starts,
        buffer.add(env.steps(uniform if step <= sizes["sac_learning_starts"] else explore, 1))
        if step > sizes["sac_learning_starts"]:       # one update per step after it
            sac.update(buffer.sample(hp["batch_size"], gen))
        ev.maybe(step, lambda: sac.numpy_policy(deterministic=True))


def run_sb3_sac(job: dict, sizes: dict, hp: dict, ev: Evaluator) -> None:
    from stable_baselines3 import SAC as SB3SAC
    model = SB3SAC("MlpPolicy", envs.make_env(job["env"]), seed=job["seed"], device="cpu", **sb3_sac_kwargs(hp, sizes))

    def deterministic():
        return lambda obs: model.predict(obs, deterministic=True)[0]
    model.learn(sizes["sac_steps"], callback=_eval_callback(ev, deterministic))
    ev.maybe(model.num_timesteps, deterministic)


RUNNERS = {("trpo", "project-linear"): run_project_trpo, ("trpo", "project-mlp"): run_project_trpo,
           ("trpo", "sb3-contrib"): run_sb3_trpo, ("sac", "stable-baselines3"): run_sb3_sac,
           **{("sac", impl): run_project_sac for impl in SAC_SWITCHES}}


def job_name(job: dict) -> str:
    return f"{job['algo']} {job['implementation']} {job['env']} seed {job['seed']}"


def run_job(job: dict, sizes: dict, hp: dict) -> dict:
    """One run: its evaluation points and its CPU time (process time, one torch thread)."""
    torch.set_num_threads(1)
    algo = job["algo"]
    ev = Evaluator(job, sizes[f"{algo}_eval_every"], sizes[f"{algo}_steps"], sizes["eval_episodes"])
    if job["implementation"] == PEER[algo]:
        check_peers()  # their imports (once per process) are not the run's CPU time
    t0, w0 = time.process_time(), time.perf_counter()
    RUNNERS[algo, job["implementation"]](job, sizes, hp, ev)
    cpu = time.process_time() - t0
    steps = sizes[f"{algo}_steps"]
    return {**job, "env_steps": steps, "eval_steps": [p["steps"] for p in ev.points],
            "returns": [p["returns"] for p in ev.points], "mean_returns": [p["mean"] for p in ev.points],
            "cpu_seconds": cpu, "eval_cpu_seconds": ev.cpu_seconds, "train_cpu_seconds": cpu - ev.cpu_seconds,
            "eval_env_steps": ev.env_steps, "wall_seconds": time.perf_counter() - w0}


# ---------------------------------------------------------------- statistics and the verdict
def verdict(project_finals, peer_finals) -> str:
    """PASS_RULE on final returns (one per seed): 'pass', 'fail', or 'no verdict: ...' without a CI."""
    ours, peer = bootstrap_ci(project_finals), bootstrap_ci(peer_finals)
    if not np.isfinite(ours.point):
        return "no verdict: no project run"
    if not (np.isfinite(peer.low) and np.isfinite(peer.high)):
        return "no verdict: the peer needs 2 or more seeds for a CI"
    return "pass" if ours.point >= peer.low else "fail"


def summarise(runs: list[dict]) -> list[dict]:
    """Per algorithm, env and implementation: the final mean return over seeds, its 95 % CI and the verdict."""
    rows = []
    for algo, impls in IMPLEMENTATIONS.items():
        for env_name in sorted({r["env"] for r in runs if r["algo"] == algo}):
            finals = {i: [r["mean_returns"][-1] for r in runs if (r["algo"], r["env"], r["implementation"]) ==
                          (algo, env_name, i)] for i in impls}
            for impl in impls:
                if not finals[impl]:
                    continue
                ci = bootstrap_ci(finals[impl])
                rows.append({"algo": algo, "env": env_name, "implementation": impl, "seeds": len(finals[impl]),
                             "final_mean": ci.point, "ci_low": ci.low, "ci_high": ci.high,
                             "verdict": "peer" if impl == PEER[algo] else verdict(finals[impl], finals[PEER[algo]])})
    return rows


def curves(runs: list[dict], algo: str, env_name: str, impl: str):
    """Steps, mean over seeds and the 95 % bootstrap CI at each evaluation point (the points all seeds have)."""
    sel = [r for r in runs if (r["algo"], r["env"], r["implementation"]) == (algo, env_name, impl)]
    if not sel:
        return None
    n = min(len(r["mean_returns"]) for r in sel)
    cis = [bootstrap_ci([r["mean_returns"][k] for r in sel]) for k in range(n)]
    return np.asarray(sel[0]["eval_steps"][:n]), np.array([[c.point, c.low, c.high] for c in cis]).T


def figure_pdf(runs: list[dict], episodes: int) -> bytes:
    """Learning curves side by side: one panel per algorithm and env, mean over seeds, shaded 95 % bootstrap CI."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(a, e) for a in IMPLEMENTATIONS for e in ENVS if any((r["algo"], r["env"]) == (a, e) for r in runs)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False)
    for ax, (algo, env_name) in zip(axes[0], panels):
        for impl in IMPLEMENTATIONS[algo]:
            c = curves(runs, algo, env_name, impl)
            if c is None:
                continue
            steps, (mean, low, high) = c
            line, = ax.plot(steps, mean, marker="o", ms=3, label=impl)
            ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color(), lw=0)
        ax.set_title(f"{algo.upper()} · {envs.get_spec(env_name).env_id}")
        ax.set_xlabel("env steps")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("eval return")
    seeds = sorted({r["seed"] for r in runs})
    fig.text(0.01, -0.04, f"mean over seeds {seeds} · shaded: 95 % bootstrap CI · deterministic mean action, "
             f"{episodes} episodes per point", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return buf.getvalue()


def estimate_full_cpu_hours(runs: list[dict], seeds: int = 3) -> dict:
    """The full calibration's CPU time (FULL sizes, `seeds` seeds, Hopper and HalfCheetah TRPO,
    HalfCheetah SAC) from the speeds of these runs: training CPU per env step, and evaluation
    CPU per eval step times 1000-step episodes at every point (the upper bound)."""
    per_job, missing = {}, []
    for algo, impls in IMPLEMENTATIONS.items():
        for impl in impls:
            for env_name in (ENVS if algo == "trpo" else ("halfcheetah",)):
                sel = [r for r in runs if (r["algo"], r["implementation"], r["env"]) == (algo, impl, env_name)]
                if not sel:
                    missing.append(f"{algo} {impl} {env_name}")
                    continue
                train = sum(r["train_cpu_seconds"] for r in sel) / sum(r["env_steps"] for r in sel)
                ev = sum(r["eval_cpu_seconds"] for r in sel) / max(1, sum(r["eval_env_steps"] for r in sel))
                points = FULL[f"{algo}_steps"] // FULL[f"{algo}_eval_every"] + 1
                per_job[f"{algo} {impl} {env_name}"] = {
                    "train_steps_per_cpu_second": 1.0 / train,
                    "cpu_seconds_per_run": train * FULL[f"{algo}_steps"] + ev * points * FULL["eval_episodes"] * 1000}
    total = seeds * sum(v["cpu_seconds_per_run"] for v in per_job.values()) / 3600
    return {"per_run": per_job, "seeds": seeds, "cpu_hours": total, "not_measured": missing}


# ---------------------------------------------------------------- the CLI
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_peers() -> None:
    try:
        import sb3_contrib  # noqa: F401
        import stable_baselines3  # noqa: F401
    except ImportError as err:
        raise CalibrationError(f"{err.name} is not installed: install the calibrate extra "
                               "(make calibrate, or .venv/bin/pip install -e '.[calibrate]')") from None


def check_sizes(sizes: dict, seeds: list[int]) -> None:
    for key, value in sizes.items():
        if value < (0 if key == "sac_learning_starts" else 1):
            raise CalibrationError(f"--{key.replace('_', '-')} must be positive, got {value}")
    for algo, unit in (("trpo", sizes["trpo_batch"]), ("sac", 1)):
        steps, every = sizes[f"{algo}_steps"], sizes[f"{algo}_eval_every"]
        if every % unit or steps % every:
            raise CalibrationError(f"--{algo}-eval-every {every} must be a multiple of {unit} (the TRPO batch) and "
                                   f"divide --{algo}-steps {steps}: pick e.g. --{algo}-eval-every {steps}")
    if sizes["sac_learning_starts"] >= sizes["sac_steps"]:
        raise CalibrationError(f"--sac-learning-starts {sizes['sac_learning_starts']} leaves no SAC update in "
                               f"--sac-steps {sizes['sac_steps']}: lower it")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CalibrationError(f"--seeds must be distinct non-negative integers, got {seeds}")


def previous_runs(out: Path, sizes: dict, hyper: dict) -> list[dict]:
    """The runs of an earlier call into the same --out made with the same sizes and hyperparameters
    (a rerun after a kill goes on from them); another calibration in that file is refused."""
    if not out.is_file():
        return []
    try:
        old = json.loads(out.read_text())
        runs, old_sizes, old_hyper = old["runs"], old["sizes"], old["hyperparameters"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CalibrationError(f"{out} is not a calibration JSON ({err}); pass another --out or remove it") from None
    same = json.loads(json.dumps(sizes)) == old_sizes and all(
        old_hyper.get(a, {}).get(e, hp) == json.loads(json.dumps(hp)) for a in hyper for e, hp in hyper[a].items())
    if not same:
        raise CalibrationError(f"{out} holds a calibration with other sizes or hyperparameters; pass another --out "
                               "or remove it to start over")
    for a, per_env in old_hyper.items():
        for e, hp in per_env.items():
            hyper.setdefault(a, {}).setdefault(e, hp)
    return runs


def document(sizes: dict, hyper: dict, runs: list[dict], tiny: bool) -> dict:
    versions = {p: metadata.version(p) for p in ("torch", "gymnasium", "mujoco", "stable-baselines3", "sb3-contrib")}
    doc = {"what": "issue 20: the project's TRPO and SAC beside sb3-contrib's TRPO and Stable-Baselines3's SAC "
                   "(bench/calibrate.py)",
           "pass_rule": PASS_RULE, "tiny": tiny, "sizes": sizes, "hyperparameters": hyper,
           "differences": DIFFERENCES, "versions": versions, "summary": summarise(runs), "runs": runs}
    if tiny:
        doc["estimate_full"] = estimate_full_cpu_hours(runs)
    return doc


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--envs", nargs="+", choices=ENVS, default=list(ENVS), help="TRPO's envs")
    parser.add_argument("--sac-envs", nargs="+", choices=ENVS, default=["halfcheetah"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tiny", action="store_true", help=f"tiny sizes {TINY} (flags below still win)")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--out", default=None, help="the JSON (default bench/calibration.json; "
                        "--tiny: bench/tmp/calibration_tiny.json); a rerun goes on from its finished runs")
    parser.add_argument("--figure", default=None, help="the PDF (default paper_figures/calibration.pdf)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sizes = {k: (getattr(args, k) if getattr(args, k) is not None else (TINY if args.tiny else FULL)[k])
                 for k in FULL}
        check_sizes(sizes, args.seeds)
        if args.jobs < 1:
            raise CalibrationError(f"--jobs must be 1 or more, got {args.jobs}")
        check_peers()
        out = Path(args.out or DEFAULT_OUT[args.tiny][0])
        figure = Path(args.figure or DEFAULT_OUT[args.tiny][1])
        if not str(out).strip() or not str(figure).strip():
            raise CalibrationError("--out and --figure must name files, e.g. --out bench/calibration.json")
        env_lists = {"trpo": args.envs, "sac": args.sac_envs}
        hyper = {a: {e: (trpo_hyperparameters if a == "trpo" else sac_hyperparameters)(e) for e in env_lists[a]}
                 for a in args.algos}
        runs = previous_runs(out, sizes, hyper)
    except CalibrationError as err:
        log(f"error: {err}")
        return 2
    log(f"calibrate: sizes {sizes}\ncalibrate: mapped hyperparameters (project | peer):")
    for what, ours, peer in mapping_rows(hyper, sizes):
        log(f"  {what}: {ours} | {peer}")
    log("calibrate: differences that remain:\n" + "\n".join(f"  - {d}" for d in DIFFERENCES))
    log(f"calibrate: pass rule: {PASS_RULE}")
    done = {(r["algo"], r["implementation"], r["env"], r["seed"]) for r in runs}
    jobs = [{"algo": a, "implementation": i, "env": e, "seed": s} for a in args.algos for e in env_lists[a]
            for s in args.seeds for i in IMPLEMENTATIONS[a] if (a, i, e, s) not in done]
    log(f"calibrate: {len(jobs)} runs to do, {len(done)} found in {out}")

    def finished(record: dict) -> None:
        runs.append(record)
        write_text(out, json.dumps(document(sizes, hyper, runs, args.tiny), indent=1) + "\n")
        log(f"calibrate: done {job_name(record)}: final return {record['mean_returns'][-1]:.1f}, "
            f"{record['cpu_seconds']:.0f} CPU-s ({record['env_steps'] / record['train_cpu_seconds']:.0f} "
            f"train steps per CPU-s)")
    if args.jobs == 1:
        for job in jobs:
            log(f"calibrate: start {job_name(job)}")
            finished(run_job(job, sizes, hyper[job["algo"]][job["env"]]))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_job, job, sizes, hyper[job["algo"]][job["env"]]) for job in jobs]
            for future in futures:
                finished(future.result())
    doc = document(sizes, hyper, runs, args.tiny)
    write_text(out, json.dumps(doc, indent=1) + "\n")
    write_bytes(figure, figure_pdf(runs, sizes["eval_episodes"]))
    print(f"{'algo':5} {'env':12} {'implementation':18} {'seeds':>5}  final return [95 % CI]       verdict")
    for row in doc["summary"]:
        ci = fmt_interval((row["final_mean"], row["ci_low"], row["ci_high"]), digits=1)
        print(f"{row['algo']:5} {row['env']:12} {row['implementation']:18} {row['seeds']:5}  {ci:28} {row['verdict']}")
    if args.tiny:
        est = doc["estimate_full"]
        for name, v in est["per_run"].items():
            print(f"speed {name}: {v['train_steps_per_cpu_second']:.0f} train steps per CPU-s, "
                  f"full run ~{v['cpu_seconds_per_run'] / 60:.0f} CPU-min")
        missing = ", ".join(est["not_measured"])
        missing = f", without the runs not measured here: {missing}" if missing else ""
        print(f"estimate: the full calibration ({est['seeds']} seeds) ~{est['cpu_hours']:.1f} CPU-hours{missing}")
    log(f"calibrate: wrote {out} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
