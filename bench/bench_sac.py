"""SAC and MOPO speed: one SAC gradient step, MOPO's model rollouts, and the deployed policy.

What is counted (HalfCheetah shapes: obs 17, act 6; torch CPU unless a GPU is present):
  sac_update_ms                 one SAC.update (batch 256, 256 x 256 actor and twin Q: three
                                losses, one backward, one Adam step, Polyak), mean over n updates
  sac_update_mixed_batch_ms     the same plus drawing the 5 % real / 95 % model batch from two
                                replay buffers, i.e. one iteration of MOPO's SAC loop
  sac_update_1_thread_ms        sac_update_ms with torch.set_num_threads(1) (mini and smoke run
                                with torch_threads 1); sac_update_mixed_batch_1_thread_ms likewise
  sac_update_1_thread_cpu_ms    the same in process CPU time: on 1 thread it is the work itself,
                                much less disturbed than wall time when other jobs share the cores
  mopo_model_step_per_s         transitions/s of one penalised model step (algos.mopo): an
                                all-member prediction of 7 probabilistic 4 x 200 swish members
                                (the penalty needs every member's sigma) plus the elite sample,
                                on `rollout_states` start states
  mopo_rollout_per_s            transitions/s of model_rollout with horizon 5 (policy sampling,
                                model step, termination), the work of one MOPO rollout
  numpy_policy_call_us          one call of SAC.numpy_policy(deterministic=False) on a single
                                observation, the collector's per-step cost; torch_policy_call_us is
                                the torch actor for comparison
  sac_s_per_deployment          sac_steps x the faster of the two mixed-batch timings, per profile
                                (config/*.yaml), rollouts excluded
  sac_s_per_1e4_steps           1e4 SAC steps at paper shapes (the faster mixed-batch timing)
  sac_h_official_1e6_steps      what MOPO's official offline run, 1,000 epochs x 1,000 steps = 1e6,
                                would cost per deployment, in hours (SAC steps alone)
  rollout_s_per_1e4_steps       MOPO's model rollouts that go with 1e4 SAC steps: 10 rollouts
                                (every 1000 steps) of 50k start states x horizon 5, at
                                mopo_rollout_per_s (with termination off: the upper bound)

Use: `run(quick) -> dict` (bench/run.py assembles results.json), or
`python bench/bench_sac.py [--quick]` to print a table.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from algos.config import load_profile
from algos.core.ensemble import DynamicsEnsemble
from algos.core.sac import SAC, ReplayBuffer, mixed_batch
from algos.mopo import model_rollout, penalised_model_step
from timing import best_time  # noqa: E402  (bench/ is on sys.path)

OBS, ACT = 17, 6


def _sac(device) -> SAC:
    return SAC(OBS, ACT, hidden=[256, 256], lr=3e-4, tau=5e-3, gamma=0.99, batch_size=256, target_entropy=-3.0,
               device=device, generator=torch.Generator(device=device).manual_seed(0))


def _buffer(n: int, device, seed: int) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    return ReplayBuffer.from_arrays({"obs": rng.normal(size=(n, OBS)), "act": rng.uniform(-1, 1, (n, ACT)),
                                     "rew": rng.normal(size=n), "next_obs": rng.normal(size=(n, OBS)),
                                     "terminated": np.zeros(n, bool)}, device)


def sac_update_ms(device, n_updates: int, repeats: int, mixed: bool, clock=time.perf_counter) -> float:
    sac = _sac(device)
    real, model = _buffer(10_000, device, 1), _buffer(50_000, device, 2)
    gen = torch.Generator(device=device).manual_seed(0)
    fixed = mixed_batch(real, model, 256, 0.05, gen)

    def loop():
        for _ in range(n_updates):
            sac.update(mixed_batch(real, model, 256, 0.05, gen) if mixed else fixed)

    for _ in range(10):  # warm-up: allocator, Adam state
        sac.update(fixed)
    return 1e3 * best_time(loop, repeats, clock) / n_updates


def mopo_model(device) -> DynamicsEnsemble:
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, members=7, hidden=[200] * 4, probabilistic=True, activation="swish",
                             reward_target=True, learn_logvar_bounds=True).to(device)
    model.elites = torch.arange(5, device=device)
    return model


def mopo_rates(device, n_states: int, repeats: int) -> dict:
    model, sac = mopo_model(device), _sac(device)
    gen = torch.Generator(device=device).manual_seed(0)
    obs = torch.randn(n_states, OBS, device=device)
    act = torch.rand(n_states, ACT, device=device) * 2 - 1
    never = lambda s, a, s2: torch.zeros(len(s), dtype=torch.bool, device=s.device)  # noqa: E731

    def step():
        penalised_model_step(model.predict(obs, act), model.elites, "max_std_norm", 1.0, gen)

    def rollout():
        model_rollout(model, sac.actor, obs, 5, never, "max_std_norm", 1.0, gen)

    step()
    return {"mopo_model_step_per_s": n_states / best_time(step, repeats),
            "mopo_rollout_per_s": 5 * n_states / best_time(rollout, repeats)}


def policy_call_us(n_calls: int, repeats: int) -> dict:
    sac = _sac(torch.device("cpu"))
    policy = sac.numpy_policy(deterministic=False, seed=0)
    one = np.zeros((1, OBS), np.float32)
    gen = torch.Generator().manual_seed(0)

    def numpy_loop():
        for _ in range(n_calls):
            policy(one)

    def torch_loop():
        for _ in range(n_calls):
            sac.act(one, deterministic=False, generator=gen)

    return {"numpy_policy_call_us": 1e6 * best_time(numpy_loop, repeats) / n_calls,
            "torch_policy_call_us": 1e6 * best_time(torch_loop, repeats) / n_calls}


def run(quick: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_updates = 50 if quick else 300
    repeats = 2 if quick else 3
    n_states = 10_000 if quick else 50_000
    out = {"quick": quick, "device": str(device), "torch_threads": torch.get_num_threads(),
           "updates_per_measurement": n_updates, "repeats_best_of": repeats, "rollout_states": n_states}
    out["sac_update_ms"] = sac_update_ms(device, n_updates, repeats, mixed=False)
    out["sac_update_mixed_batch_ms"] = sac_update_ms(device, n_updates, repeats, mixed=True)
    if device.type == "cpu":  # what the mini and smoke profiles run (torch_threads: 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out["sac_update_1_thread_ms"] = sac_update_ms(device, n_updates, repeats, mixed=False)
            out["sac_update_mixed_batch_1_thread_ms"] = sac_update_ms(device, n_updates, repeats, mixed=True)
            out["sac_update_1_thread_cpu_ms"] = sac_update_ms(device, n_updates, repeats, mixed=False,
                                                              clock=time.process_time)
        finally:
            torch.set_num_threads(threads)
    with torch.no_grad():
        out.update(mopo_rates(device, n_states, repeats))
    out.update(policy_call_us(500 if quick else 3000, repeats))
    step_ms = min(out["sac_update_mixed_batch_ms"], out.get("sac_update_mixed_batch_1_thread_ms", float("inf")))
    out["sac_s_per_1e4_steps"] = 1e4 * step_ms / 1e3
    out["sac_h_official_1e6_steps"] = 1e6 * step_ms / 1e3 / 3600
    out["rollout_s_per_1e4_steps"] = 10 * 50_000 * 5 / out["mopo_rollout_per_s"]
    out["sac_s_per_deployment"] = {
        profile: load_profile(profile)["run"]["defaults"]["mopo"]["sac_steps"] * step_ms / 1e3
        for profile in ("paper", "mini", "smoke")}
    return out


def _table(res: dict) -> str:
    lines = [f"SAC / MOPO benchmark ({'quick' if res['quick'] else 'full'}; {res['device']}, "
             f"{res['torch_threads']} threads, best of {res['repeats_best_of']})"]
    for key, value in res.items():
        if key in ("quick", "device", "torch_threads", "repeats_best_of"):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.0f}" for k, v in value.items())
            lines.append(f"  {key:34s} {value}")
        else:
            lines.append(f"  {key:34s} {value:12.3f}" if isinstance(value, float) else f"  {key:34s} {value:>12}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table(run(quick="--quick" in sys.argv[1:])))
