"""Collector throughput: envs.collector.collect against the alternatives and the raw physics.

What is counted:
  *_steps_per_s                 env steps (transitions) per second of wall time, random actions,
                                episode resets included (time limit 1000 or the env's termination)
  raw_physics_steps_per_s       MuJoCo physics steps per second: mujoco.mj_step(model, data,
                                nstep=frame_skip) in a Python loop on the env's own model (a
                                separate MjData, reset every 1000 calls), random ctrl per call,
                                counted as calls x frame_skip
  collect_fraction_of_physics   collector_steps_per_s x frame_skip / raw_physics_steps_per_s: the
                                share of the bare simulator's speed that the collector keeps
                                (cheetah-run: dm_control steps with mj_step2 + mj_step1, same work)
Alternatives: `gym_loop` is the textbook loop (gymnasium.make's wrappers, action_space.sample()
per step); `sync_vector_x2` / `async_vector_x2` are gymnasium's vector envs with 2 copies
(total steps over both copies); `*_mlp_policy*` put a 2 x 200 tanh MLP (torch, CPU) in the loop,
with torch's default intra-op threads or with 1 thread (`*_1_thread`).

Use: `run(quick) -> dict` (bench/run.py assembles results.json), or
`python bench/bench_collect.py [--quick]` to print a table.
"""
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym
import mujoco
import numpy as np

from envs import ENV_NAMES, ENV_SPECS, make_env
from envs.collector import collect


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best_rate(fn, n: int, repeats: int) -> float:
    """Best of `repeats` runs of fn() that does n units of work: units per second (the 2 shared
    cores make the best run the least disturbed one)."""
    return n / min(_seconds(fn) for _ in range(repeats))


def _interleaved_best_rates(loops: dict, repeats: int) -> dict:
    """{label: (fn, units)} -> {label: best units/s}, the loops taking turns in each repeat so
    that a burst of load from other jobs disturbs all of them alike (the fraction is a ratio)."""
    best = {label: float("inf") for label in loops}
    for _ in range(repeats):
        for label, (fn, units) in loops.items():
            best[label] = min(best[label], _seconds(fn) / units)
    return {label: 1.0 / b for label, b in best.items()}


def raw_physics_loop(name: str, n_env_steps: int):
    """Bare mj_step on the env's model, nstep=frame_skip per call as the env does; counts
    n_env_steps x frame_skip physics steps."""
    sim = make_env(name, env_checker=False).unwrapped
    model, frame_skip = sim.model, ENV_SPECS[name].frame_skip
    data = mujoco.MjData(model)
    ctrl = np.random.default_rng(0).uniform(-1, 1, (n_env_steps, model.nu))

    def loop():
        for i in range(n_env_steps):
            if i % 1000 == 0:  # a fresh episode every 1000 env steps, as in collection
                mujoco.mj_resetData(model, data)
            data.ctrl[:] = ctrl[i]
            mujoco.mj_step(model, data, nstep=frame_skip)

    return loop, n_env_steps * frame_skip


def gym_loop(name: str, n: int):
    """The textbook loop: gymnasium.make's wrappers, action_space.sample() per step."""
    env = make_env(name, seed=0)

    def loop():
        env.reset()
        for _ in range(n):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()

    return loop, n


def vector_rate(name: str, n: int, repeats: int, asynchronous: bool, policy=None) -> float:
    """Total env steps/s of a gymnasium vector env with 2 copies (autoreset: next step)."""
    fns = [lambda: make_env(name, env_checker=False)] * 2
    venv = gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)
    iters = n // 2
    actions = np.random.default_rng(0).uniform(-1, 1, (iters, 2, ENV_SPECS[name].act_dim)).astype(np.float32)

    def loop():
        obs, _ = venv.reset(seed=0)
        for i in range(iters):
            obs, *_ = venv.step(actions[i] if policy is None else np.clip(policy(obs), -1, 1))

    try:
        return _best_rate(loop, 2 * iters, repeats)
    finally:
        venv.close()


def mlp_policy(obs_dim: int, act_dim: int):
    """A 2 x 200 tanh MLP like the paper's policy mean, as a numpy-in / numpy-out callable."""
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(obs_dim, 200), torch.nn.Tanh(), torch.nn.Linear(200, 200),
                              torch.nn.Tanh(), torch.nn.Linear(200, act_dim), torch.nn.Tanh())

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(obs)).numpy()

    return policy


def run(quick: bool) -> dict:
    names = ("halfcheetah", "hopper") if quick else ENV_NAMES
    n = 3000 if quick else 10000
    repeats = 1 if quick else 2
    out = {"quick": quick, "steps_per_measurement": n, "repeats_best_of": repeats,
           "load_average_1min_before": os.getloadavg()[0], "envs": {}}
    for name in names:
        frame_skip = ENV_SPECS[name].frame_skip
        collect(name, 200, None, seed=0)  # warm-up: imports, model compile
        row = {"frame_skip": frame_skip}
        row.update(_interleaved_best_rates({
            "collector_steps_per_s": (lambda: collect(name, n, None, seed=0), n),
            "gym_loop_steps_per_s": gym_loop(name, n),
            "raw_physics_steps_per_s": raw_physics_loop(name, n)}, repeats))
        row["collect_fraction_of_physics"] = row["collector_steps_per_s"] * frame_skip / row["raw_physics_steps_per_s"]
        out["envs"][name] = row

    # plain loop vs gymnasium's vector API on 2 cores (HalfCheetah: the cheapest physics, so the
    # loop overhead matters most there)
    name = "halfcheetah"
    vec = {"collector_steps_per_s": out["envs"][name]["collector_steps_per_s"],
           "sync_vector_x2_steps_per_s": vector_rate(name, n, repeats, asynchronous=False)}
    if not quick:  # two worker processes: slow to start, and slower on 2 shared cores
        vec["async_vector_x2_steps_per_s"] = vector_rate(name, n, repeats, asynchronous=True)
    spec = ENV_SPECS[name]
    policy = mlp_policy(spec.obs_dim, spec.act_dim)
    n_policy = n // 2
    vec["collector_mlp_policy_steps_per_s"] = _best_rate(lambda: collect(name, n_policy, policy, seed=0),
                                                         n_policy, repeats)
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: intra-op threads only add synchronisation
    try:
        vec["collector_mlp_policy_1_thread_steps_per_s"] = _best_rate(
            lambda: collect(name, n_policy, policy, seed=0), n_policy, repeats)
        vec["sync_vector_x2_mlp_policy_1_thread_steps_per_s"] = vector_rate(
            name, n_policy, repeats, asynchronous=False, policy=policy)
    finally:
        torch.set_num_threads(threads)
    vec["torch_default_threads"] = threads
    out["halfcheetah_loop_vs_vector"] = vec
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


def _table(res: dict) -> str:
    lines = [f"collector benchmark ({'quick' if res['quick'] else 'full'}: {res['steps_per_measurement']} steps, "
             f"best of {res['repeats_best_of']}, load average {res['load_average_1min_before']:.1f} -> "
             f"{res['load_average_1min_after']:.1f} on {os.cpu_count()} cores)",
             f"{'env':12s} {'collector/s':>12s} {'gym loop/s':>11s} {'raw physics/s':>14s} {'frame_skip':>10s} "
             f"{'collect_fraction_of_physics':>28s}"]
    for name, r in res["envs"].items():
        lines.append(f"{name:12s} {r['collector_steps_per_s']:12.0f} {r['gym_loop_steps_per_s']:11.0f} "
                     f"{r['raw_physics_steps_per_s']:14.0f} {r['frame_skip']:10d} {r['collect_fraction_of_physics']:28.2f}")
    lines.append("halfcheetah, plain loop vs gymnasium vector API (total env steps/s):")
    for key, value in res["halfcheetah_loop_vs_vector"].items():
        lines.append(f"  {key:48s} {value:10.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table(run(quick="--quick" in sys.argv[1:])))
