"""Imagined rollouts at the shapes TRPO really runs (issue 15): 200 rollouts x 250 steps
(HalfCheetah, Ant, Cheetah-Run) and 50 x 1000 (Hopper, Walker2d), dynamics 2 x 1024 with the
paper's members, policy 2 x 200, per sequential imagined step:

  wall_us_per_step       the step with the real networks (CPU: CPU time of this process on one
                         thread, robust to the other jobs on shared cores; CUDA: wall clock)
  dispatch_us_per_step   the same loop with tiny networks (hidden 8): the host's cost of issuing
                         the step's ops, which bounds a launch-bound GPU from below
  ops_per_step           aten ops per step (torch.profiler, nested ops included; difference of
                         two horizons, so the set-up outside the loop cancels)
  syncs_per_step         host syncs per step: aten::_local_scalar_dense (item(), int(), bool()
                         of a tensor), aten::nonzero, cudaStreamSynchronize / cudaDeviceSynchronize

for `legacy` (the loop before issue 15, `legacy_imagine` below, kept as the baseline) and the
engines of algos/core/rollouts.py, side by side in one process. Also: the member-indexed
forward (gather one member's weights vs compute every member and pick), one TRPO iteration end
to end (MUSBO: rollout, eq. 12 labels, GAE, update, through model_trpo.train_in_model) and the
projection of one paper run per env (sequential steps = deployments x iterations x
rollout_length, config/paper.yaml)."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch

import envs.model_side as model_side
from algos.config import resolve_run_config
from algos.core.ensemble import DynamicsEnsemble
from algos.core.policy import GaussianPolicy
from algos.core.rollouts import gaussian_sampler, imagine

ENVS = ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run")
# shape name -> (rollouts, horizon, env measured, obs_dim, act_dim)
SHAPES = {"200x250": (200, 250, "halfcheetah", 17, 6), "50x1000": (50, 1000, "hopper", 11, 3)}
TINY = [8]
# CPU: this process's CPU seconds on 1 thread (2 shared cores: the wall clock measures the other
# jobs too); CUDA: the wall clock around synchronize (the GPU's time is the point).
_clock = time.perf_counter


# ---- the baseline: algos/core/rollouts.py:imagine before issue 15 (git 33b1683), per_step only ----
@torch.no_grad()
def legacy_imagine(dynamics, policy_sample: Callable, start_obs: torch.Tensor, horizon: int, env_name: str,
                   generator: torch.Generator | None, members: Sequence[int] | None = None) -> dict:
    """One member drawn per step for all rollouts (int() of a tensor: a host sync), the member's
    weights sliced by a Python int, terminated rollouts frozen; policy_sample(obs, generator)."""
    device = start_obs.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    candidates = torch.as_tensor(range(dynamics.members) if members is None else members).long().to(gen_device)
    n = start_obs.shape[0]
    obs = start_obs
    alive = torch.ones(n, device=device)
    out = {k: [] for k in ("obs", "act", "rew", "next_obs", "terminated", "alive", "member")}
    for _ in range(horizon):
        act = policy_sample(obs, generator)
        act_clipped = act.clamp(-1.0, 1.0)
        m = int(candidates[torch.randint(len(candidates), (1,), generator=generator, device=gen_device)])
        next_obs = dynamics.predict(obs, act_clipped, member=m).next_obs[0]
        member = torch.full((n,), m, dtype=torch.long, device=device)
        live = alive.bool()
        next_obs = torch.where(live[:, None], next_obs, obs)
        rew = model_side.model_reward(env_name, obs, act_clipped, next_obs) * alive
        terminated = model_side.model_termination(env_name, obs, act_clipped, next_obs) & live
        for key, value in zip(out, (obs, act, rew, next_obs, terminated, alive, member)):
            out[key].append(value)
        alive = alive * (~terminated).float()
        obs = next_obs
    return {k: torch.stack(v) for k, v in out.items()}


def legacy_sample(policy: GaussianPolicy) -> Callable:
    """The old policy_sample(obs, generator): noise drawn inside the loop."""
    def sample(obs, generator):
        mean, log_std = policy.distribution(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + log_std.exp() * noise
    return sample


# ---- helpers ----
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _models(obs_dim: int, act_dim: int, dyn_hidden, members: int, pol_hidden, device):
    torch.manual_seed(0)
    model = DynamicsEnsemble(obs_dim, act_dim, members=members, hidden=dyn_hidden).to(device)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(2000, obs_dim, generator=g), torch.rand(2000, act_dim, generator=g) * 2 - 1
    model.input_norm.fit(torch.cat([obs, act], 1).to(device))
    model.target_norm.fit((0.05 * torch.randn(2000, obs_dim, generator=g)).to(device))
    model.eval()
    policy = GaussianPolicy(obs_dim, act_dim, hidden=pol_hidden).to(device)
    start = (0.1 * torch.randn(5000, obs_dim, generator=g)).to(device)
    start[:, 0] += 1.25  # Hopper: a healthy height, so that paths run before they end
    return model, policy, start


def _runner(engine: str, model, policy, start, n: int, horizon: int, env: str, device) -> Callable:
    gen = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    if engine == "legacy":
        sample, pick = legacy_sample(policy), torch.arange(n, device=device) % len(start)
        return lambda h=horizon: legacy_imagine(model, sample, start[pick], h, env, gen())
    sample = gaussian_sampler(policy)
    return lambda h=horizon: imagine(model, sample, start, n, h, env, gen(), member_choice="per_step", engine=engine)


def _us_per_step(run: Callable, horizon: int, device, repeats: int) -> float:
    run()  # warm-up (and compilation / capture)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = _clock()
        run()
        _sync(device)
        best = min(best, _clock() - t0)
    return 1e6 * best / horizon


def count_ops(run: Callable, horizon: int, device) -> dict:
    """aten ops and host syncs per step: profile horizons h and 2h, divide the difference by h."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    run(horizon)
    run(2 * horizon)  # warm-up: the compiled engine compiles for each new horizon once
    counts = []
    for h in (horizon, 2 * horizon):
        with profile(activities=activities) as prof:
            run(h)
            _sync(device)
        names = [e.name for e in prof.events()]
        counts.append({"ops": sum(name.startswith("aten::") for name in names),
                       "syncs": sum(name in ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
                                             "cudaDeviceSynchronize") for name in names),
                       "graph_launches": sum(name == "cudaGraphLaunch" for name in names)})
    return {f"{k}_per_step": (counts[1][k] - counts[0][k]) / horizon for k in counts[0]}


def engines_for(device: torch.device) -> list[str]:
    return ["legacy", "eager", "compiled"] + (["cuda_graph"] if device.type == "cuda" else [])


def measure_shape(name: str, device, members: int, dyn_hidden, pol_hidden, quick: bool, engines) -> dict:
    n, horizon, env, obs_dim, act_dim = SHAPES[name] if not quick else (8, 6, SHAPES[name][2], *SHAPES[name][3:])
    repeats = 1 if quick else 2
    real = _models(obs_dim, act_dim, dyn_hidden, members, pol_hidden, device)
    tiny = _models(obs_dim, act_dim, TINY, members, TINY, device)
    rows = {}
    for engine in engines:
        torch._dynamo.reset()
        wall = _us_per_step(_runner(engine, *real, n, horizon, env, device), horizon, device, repeats)
        dispatch_run = _runner(engine, *tiny, n, horizon, env, device)
        dispatch = _us_per_step(dispatch_run, horizon, device, repeats)
        rows[engine] = {"wall_us_per_step": wall, "dispatch_us_per_step": dispatch,
                        **count_ops(dispatch_run, min(horizon, 20), device)}
        print(f"bench_rollouts: {name} {engine}: {wall:.0f} us per step (dispatch {dispatch:.0f})",
              file=sys.stderr, flush=True)  # progress: a run cut off by its time limit still says this much
    best = min((e for e in engines if e != "legacy"), key=lambda e: rows[e]["dispatch_us_per_step"])
    return {"rollouts": n, "horizon": horizon, "env": env, "engines": rows, "best_engine": best,
            "dispatch_speedup_vs_legacy": rows["legacy"]["dispatch_us_per_step"] / rows[best]["dispatch_us_per_step"],
            "wall_speedup_vs_legacy": rows["legacy"]["wall_us_per_step"] / rows[best]["wall_us_per_step"]}


def member_forward(device, members: int, dyn_hidden, quick: bool) -> dict:
    """us per dynamics forward at 50 and 200 rows: one member's weights gathered on the device
    (predict(member=0-dim tensor), per_step's form) vs every member computed and each row's picked
    (predict(member=[N] tensor), per_rollout / per_transition) vs the old int slice."""
    model, _, start = _models(17, 6, dyn_hidden, members, TINY, device)
    out = {}
    for rows in (50, 200):
        obs, act = start[:rows], torch.zeros(rows, 6, device=device)
        forms = {"gather_one_member": torch.tensor(1, device=device),
                 "all_members_pick": torch.arange(rows, device=device) % members, "int_slice": 1}
        for form, member in forms.items():
            call = lambda: model.predict(obs, act, member=member)  # noqa: E731
            call()
            reps = 5 if quick else 50
            _sync(device)
            t0 = _clock()
            for _ in range(reps):
                call()
            _sync(device)
            out[f"{form}_{rows}_rows_us"] = 1e6 * (_clock() - t0) / reps
    return out


def bench_config(algo: str, env: str, device, quick: bool, iterations: int = 1, profile: str = "paper",
                 engine: str = "auto") -> dict:
    sets = [f"trpo.iterations={iterations}", f"device={device.type}", f"trpo.rollout_engine={engine}"]
    if quick:  # tiny sizes: the whole path runs in seconds
        sets += ["trpo.transitions_per_iteration=48", "trpo.rollout_length=6", "dynamics.hidden=[16,16]",
                 "labeler.hidden=[16,16]", "policy.hidden=[8,8]"]
    return resolve_run_config(profile, algo, env, "500k", 0, sets)


def trpo_iteration(device, quick: bool, env: str = "halfcheetah", profile: str = "paper", engine: str = "auto",
                   repeats: int = 1) -> dict:
    """Seconds of one MUSBO TRPO iteration at the profile's shape (paper: dynamics 2 x 1024,
    policy 2 x 200): imagine + eq. 12 labels (K = 3 labeler members) + GAE + the TRPO update, via
    model_trpo.train_in_model. The first call warms up (compiles, captures); iteration_s is the
    fastest of `repeats` more."""
    from algos.core.model_trpo import train_in_model
    from algos.musbo import MUSBO
    from envs import get_spec

    cfg = bench_config("musbo", env, device, quick, profile=profile, engine=engine)
    obs_dim, act_dim = get_spec(env).obs_dim, get_spec(env).act_dim
    algo = MUSBO(env, cfg, obs_dim, act_dim, device, 0)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(5000, obs_dim, generator=g), torch.rand(5000, act_dim, generator=g) * 2 - 1
    for model in (algo.dynamics, algo.labeler):
        model.input_norm.fit(torch.cat([obs, act], 1).to(device))
        model.target_norm.fit((0.05 * torch.randn(5000, obs_dim, generator=g)).to(device))
        model.eval()
    gen = torch.Generator(device).manual_seed(0)
    label_fn = lambda s, a: algo.imagined_labels(s, a, gen)  # noqa: E731
    starts = 0.1 * obs.numpy()
    starts[:, 0] += 1.25
    seconds, walls = [], []  # _clock's, and the wall clock's (a compilation may run in worker processes)
    for _ in range(1 + repeats):
        _sync(device)
        t0, w0 = _clock(), time.perf_counter()
        train_in_model(algo.policy, algo.dynamics, starts, None, cfg, cfg["musbo"]["member_choice"], gen, label_fn)
        _sync(device)
        seconds.append(_clock() - t0)
        walls.append(time.perf_counter() - w0)
    t = cfg["trpo"]
    return {"env": env, "transitions": (t["transitions_per_iteration"] // t["rollout_length"]) * t["rollout_length"],
            "engine": t["rollout_engine"], "iteration_s": min(seconds[1:]), "first_call_s": seconds[0],
            "first_call_wall_s": walls[0], "iteration_wall_s": min(walls[1:])}


def sequential_steps(env: str) -> int:
    cfg = resolve_run_config("paper", "musbo", env, "500k", 0)
    return cfg["deployments"] * cfg["trpo"]["iterations"] * cfg["trpo"]["rollout_length"]


def project(shapes: dict, iteration: dict | None) -> dict:
    """Hours of one paper run per env. rollout_hours: sequential steps x the best engine's wall
    time per step at the env's shape; dispatch_floor_hours: the same with the dispatch time (what
    an eager launch-bound accelerator could not beat); trpo_hours (with a measured iteration): the
    rollout plus the rest of an iteration (labels, GAE, update on 50k samples, measured at
    200 x 250 and taken as the same at 50 x 1000), model fits excluded."""
    out = {}
    for env in ENVS:
        cfg = resolve_run_config("paper", "musbo", env, "500k", 0)
        t = cfg["trpo"]
        shape = shapes["50x1000" if t["rollout_length"] == 1000 else "200x250"]
        best = shape["engines"][shape["best_engine"]]
        steps = sequential_steps(env)
        row = {"sequential_steps": steps, "iterations_total": cfg["deployments"] * t["iterations"],
               "rollout_hours": steps * best["wall_us_per_step"] / 3.6e9,
               "legacy_rollout_hours": steps * shape["engines"]["legacy"]["wall_us_per_step"] / 3.6e9,
               "dispatch_floor_hours": steps * best["dispatch_us_per_step"] / 3.6e9,
               "legacy_dispatch_floor_hours": steps * shape["engines"]["legacy"]["dispatch_us_per_step"] / 3.6e9}
        if iteration is not None:
            measured = shapes["200x250"]
            rest_s = max(0.0, iteration["iteration_s"] - measured["horizon"] * 1e-6
                         * measured["engines"][measured["best_engine"]]["wall_us_per_step"])
            row["trpo_hours"] = row["rollout_hours"] + row["iterations_total"] * rest_s / 3600
        out[env] = row
    return out


def run(quick: bool, device: str = "cpu", with_iteration: bool = True, engines: list[str] | None = None) -> dict:
    """engines: default legacy, eager, compiled (+ cuda_graph on CUDA)."""
    global _clock
    device = torch.device(device)
    if device.type == "cpu":
        torch.set_num_threads(1)
        _clock = time.process_time
    cfg = resolve_run_config("paper", "musbo", "halfcheetah", "500k", 0)
    members, dyn_hidden, pol_hidden = cfg["dynamics"]["members"], cfg["dynamics"]["hidden"], cfg["policy"]["hidden"]
    if quick:
        dyn_hidden, pol_hidden = [32, 32], [16, 16]
    out = {"device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "clock": "process_time" if _clock is time.process_time else "wall",
           "load_avg_1min_start": round(os.getloadavg()[0], 2), "dynamics_members": members,
           "dynamics_hidden": dyn_hidden, "policy_hidden": pol_hidden, "quick": quick}
    engines = engines or engines_for(device)
    out["shapes"] = {name: measure_shape(name, device, members, dyn_hidden, pol_hidden, quick, engines)
                     for name in SHAPES}
    out["member_forward"] = member_forward(device, members, dyn_hidden, quick)
    out["trpo_iteration"] = trpo_iteration(device, quick) if with_iteration else None
    out["projection_hours"] = project(out["shapes"], out["trpo_iteration"])
    out["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    import json
    print(json.dumps(run("--quick" in sys.argv), indent=1, default=float))
