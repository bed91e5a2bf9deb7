"""Model-side throughput: the dynamics ensemble's training and imagined rollouts against the
machine's batched-GEMM peak, measured side by side in one process.

What is counted:
  gemm_gflops[_bf16]            torch.bmm [5, n, 1024] x [5, 1024, 1024], n = 256 and 1000, float32
                                (and bf16): the peak the ensemble's layers can reach on this machine,
                                measured before every other measurement, best of all kept
  train_<size>_batched          member-samples/s of ModelTrainer.fit (one EnsembleLinear bmm per
                                layer, fused Adam): every member sees every training sample once per
                                epoch, so member-samples = members x n_train x epochs; validation,
                                shuffling and gathers are included (fit's own loop)
  train_<size>_batched_bf16     the same with ModelTrainer(bf16=True) (CPU autocast)
  train_<size>_loop             the textbook alternative: one nn.Linear MLP and one Adam per member,
                                stepped in a Python loop (same batch size, same data)
  *_frac_peak                   FLOP rate / gemm_gflops, FLOPs = 3 x 2 x sum_layers(in x out) per
                                member-sample (forward 2 in out, backward twice that); the bf16
                                row also against gemm_gflops_bf16 (*_frac_bf16_peak)
  rollout_<size>_transitions_per_s   algos.core.rollouts.imagine from 50k start states (quick: 2k),
                                one member per step (per_step), algos.core.policy.GaussianPolicy (2 x 200),
                                HalfCheetah's model reward and termination; frac_peak counts the
                                model's forward FLOPs only (2 x sum in x out; the policy adds
                                ~4 % at paper size and about as much as the model at mini size)
  bc_steps_per_s                behaviour cloning Adam steps/s (2 x 200 policy, batch 256), and
  bc_s_official_300k_steps      what BREMEN's 300,000 steps cost per deployment at that rate
  rollout_<size>_musbo_*        the same through MUSBO's own objects: dynamics M-hat (one member per
                                step), the eq. 12 labels of the labeler P-hat (K = 3 probabilistic
                                members, both heads) and the policy; frac_peak counts all three
Sizes: paper = 5 members x 2 x 1024, batch 1000 per member (BREMEN), obs 17, act 6 (HalfCheetah);
mini = 5 x 2 x 200, batch 256 (config/mini.yaml). Best of `repeats` timings (2 shared cores).

Use: `run(quick) -> dict`, or `python bench/bench_models.py [--quick] [--profile]` to print a
table (--profile: torch.profiler's top operators for one paper-size fit epoch; --threads N;
--clock cpu for CPU-time rates on a busy machine).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from algos.core.ensemble import DynamicsEnsemble
from algos.core.policy import GaussianPolicy
from algos.core.rollouts import gaussian_sampler, imagine
from algos.core.training import ModelTrainer, Patience
from timing import best_time  # noqa: E402  (bench/ is on sys.path)

OBS, ACT, MEMBERS = 17, 6, 5
SIZES = {"paper": {"hidden": [1024, 1024], "batch": 1000}, "mini": {"hidden": [200, 200], "batch": 256}}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def _timed(fn, repeats: int) -> float:
    return best_time(fn, repeats, _clock)


def macs_per_sample(hidden: list[int], in_dim: int = OBS + ACT, out_dim: int = OBS) -> int:
    dims = [in_dim, *hidden, out_dim]
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def gemm_gflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(MEMBERS, n, 1024, dtype=dtype)
    b = torch.randn(MEMBERS, 1024, 1024, dtype=dtype)
    iters = 5
    torch.bmm(a, b)
    t = _timed(lambda: [torch.bmm(a, b) for _ in range(iters)], repeats)
    return 2 * MEMBERS * n * 1024 * 1024 * iters / t / 1e9


def synthetic_data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    next_obs = obs + 0.1 * torch.tanh(obs @ torch.randn(OBS, OBS, generator=g) * 0.3) + 0.05 * act.sum(1, keepdim=True)
    return obs, act, next_obs


def train_batched(hidden, batch, n, repeats, bf16=False) -> float:
    """member-samples/s of ModelTrainer.fit, one epoch, 2 % holdout."""
    obs, act, nxt = synthetic_data(n)
    torch.manual_seed(0)
    base = DynamicsEnsemble(OBS, ACT, members=MEMBERS, hidden=hidden)
    holdout = 0.02
    n_train = n - int(holdout * n)

    n_hold = int(holdout * n)
    train = {"obs": obs[n_hold:], "act": act[n_hold:], "next_obs": nxt[n_hold:]}
    hold = {"obs": obs[:n_hold], "act": act[:n_hold], "next_obs": nxt[:n_hold]}

    def once():
        m = copy.deepcopy(base)
        ModelTrainer(lr=1e-3, batch_size=batch, bf16=bf16).fit(m, train, hold, Patience(10, max_epochs=1),
                                                               torch.Generator().manual_seed(0))

    once()  # warm-up (the first optimizer step imports torch._dynamo: ~1 s once per process)
    return MEMBERS * n_train / _timed(once, repeats)


def train_loop(hidden, batch, n, repeats) -> float:
    """member-samples/s of M separate nn.Linear MLPs with M Adams, stepped member by member."""
    obs, act, nxt = synthetic_data(n)
    x = torch.cat([obs, act], 1)
    x = (x - x.mean(0)) / x.std(0)
    y = nxt - obs
    y = (y - y.mean(0)) / y.std(0)
    dims = [OBS + ACT, *hidden, OBS]
    torch.manual_seed(0)

    def mlp():
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    nets = [mlp() for _ in range(MEMBERS)]
    opts = [torch.optim.Adam(net.parameters(), lr=1e-3) for net in nets]
    g = torch.Generator().manual_seed(0)

    def epoch():
        orders = [torch.randperm(n, generator=g) for _ in range(MEMBERS)]
        for start in range(0, n, batch):
            for net, opt, order in zip(nets, opts, orders):
                idx = order[start:start + batch]
                loss = (net(x[idx]) - y[idx]).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    epoch()
    return MEMBERS * n / _timed(epoch, repeats)


def rollout_rate(hidden, n_states, horizon, repeats) -> float:
    """Imagined transitions/s of imagine(): one member per step for all rollouts."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, members=MEMBERS, hidden=hidden)
    obs, act, nxt = synthetic_data(5000)
    model.input_norm.fit(torch.cat([obs, act], 1))
    model.target_norm.fit(nxt - obs)
    sample = gaussian_sampler(GaussianPolicy(OBS, ACT, hidden=(200, 200)))
    start = torch.randn(n_states, OBS, generator=torch.Generator().manual_seed(1))
    run_once = lambda: imagine(model, sample, start, n_states, horizon, "halfcheetah", torch.Generator().manual_seed(0),
                               member_choice="per_step", engine="eager")
    imagine(model, sample, start, 256, 1, "halfcheetah", torch.Generator().manual_seed(0), member_choice="per_step")
    return n_states * horizon / _timed(run_once, repeats)


def musbo_rollout_rate(size: str, n_states, horizon, repeats) -> float:
    """Imagined transitions/s of MUSBO's TRPO rollouts: imagine() with its dynamics M-hat (one
    member per step), its policy and the eq. 12 labels of its labeler P-hat (K = 3
    probabilistic members), as MUSBO.train calls it; HalfCheetah, models of `size`."""
    from algos.config import resolve_run_config
    from algos.musbo import MUSBO
    torch.manual_seed(0)
    algo = MUSBO("halfcheetah", resolve_run_config(size, "musbo", "halfcheetah", "500k", 0), OBS, ACT,
                 torch.device("cpu"), 0)
    obs, act, nxt = synthetic_data(5000)
    for model in (algo.dynamics, algo.labeler):
        model.input_norm.fit(torch.cat([obs, act], 1))
        model.target_norm.fit(nxt - obs)
    gen = torch.Generator().manual_seed(0)
    label_fn = lambda s, a: algo.imagined_labels(s, a, gen)  # noqa: E731
    start = torch.randn(n_states, OBS, generator=torch.Generator().manual_seed(1))
    sample = gaussian_sampler(algo.policy)
    run_once = lambda: imagine(algo.dynamics, sample, start, n_states, horizon, "halfcheetah", gen,  # noqa: E731
                               member_choice="per_step", engine="eager",
                               label_fn=label_fn)
    imagine(algo.dynamics, sample, start, 256, 1, "halfcheetah", gen, member_choice="per_step", label_fn=label_fn)
    return n_states * horizon / _timed(run_once, repeats)


def musbo_rollout_flop(size: str) -> int:
    """Forward FLOPs per imagined transition: one dynamics member, K labeler members (mean and
    log-variance heads), the policy's mean network (2 x 200)."""
    from algos.config import resolve_run_config
    cfg = resolve_run_config(size, "musbo", "halfcheetah", "500k", 0)
    k = cfg["labeler"]["members"]
    return 2 * (macs_per_sample(cfg["dynamics"]["hidden"]) + k * macs_per_sample(cfg["labeler"]["hidden"], out_dim=2 * OBS)
                + macs_per_sample(cfg["policy"]["hidden"], in_dim=OBS, out_dim=ACT))


def run(quick: bool, threads: int | None = None, clock: str = "wall") -> dict:
    """All measurements in one process; `threads` sets torch's intra-op threads for the run
    (None: torch's default). Under CPU contention (other jobs on the 2 cores) 1 thread can be
    several times faster than 2 for the small (mini) sizes: OpenMP workers wait on each other.
    clock="cpu" times with the process's CPU time instead of the wall clock: with threads=1 it
    measures the work of this process alone, robust to other jobs taking turns on the cores
    (with more threads it also counts the workers' spin-waiting)."""
    global _clock
    _clock = CLOCKS[clock]
    if threads:
        torch.set_num_threads(threads)
    repeats = 1 if quick else 2
    out = {"torch_threads": torch.get_num_threads(), "clock": clock,
           "load_avg_1min_start": round(os.getloadavg()[0], 2)}

    peaks = {torch.float32: 0.0, torch.bfloat16: 0.0}

    def measure(fn):
        """fn() with a GEMM peak measured just before it: the peak kept is the best seen over the
        run, so that a busy moment cannot make a measurement look faster than the machine."""
        for dtype in peaks:
            peaks[dtype] = max(peaks[dtype], *(gemm_gflops(n, dtype, repeats + 1) for n in (256, 1000)))
        return fn()

    results = {}
    for size, cfg in SIZES.items():
        hidden, batch = cfg["hidden"], cfg["batch"]
        n = (2000 if quick else 10000) if size == "paper" else (10000 if quick else 50000)
        flop = 6 * macs_per_sample(hidden)
        results[f"train_{size}_batched"] = (measure(lambda: train_batched(hidden, batch, n, repeats)), flop)
        results[f"train_{size}_loop"] = (measure(lambda: train_loop(hidden, batch, n, repeats)), flop)
        if size == "paper":
            results[f"train_{size}_batched_bf16"] = (
                measure(lambda: train_batched(hidden, batch, n, repeats, bf16=True)), flop)
    n_states, horizon = (2000, 2) if quick else (50000, 3)
    for size in ("paper", "mini"):
        hidden = SIZES[size]["hidden"]
        results[f"rollout_{size}"] = (measure(lambda: rollout_rate(hidden, n_states, horizon, repeats)),
                                      2 * macs_per_sample(hidden))
        results[f"rollout_{size}_musbo"] = (measure(lambda: musbo_rollout_rate(size, n_states, horizon, repeats)),
                                            musbo_rollout_flop(size))
    measure(lambda: None)
    out["gemm_gflops"], out["gemm_gflops_bf16"] = peaks[torch.float32], peaks[torch.bfloat16]
    out["rollout_states"] = n_states
    for key, (rate, flop) in results.items():
        unit = "transitions_per_s" if key.startswith("rollout") else "member_samples_per_s"
        out[f"{key}_{unit}"] = rate
        out[f"{key}_frac_peak"] = rate * flop / 1e9 / out["gemm_gflops"]
        if key.endswith("bf16"):
            out[f"{key}_frac_bf16_peak"] = rate * flop / 1e9 / out["gemm_gflops_bf16"]
    out["bc_steps_per_s"] = bc_steps_per_s(100 if quick else 500, repeats)
    out["bc_s_official_300k_steps"] = 300_000 / out["bc_steps_per_s"]   # BREMEN's bc.steps, per deployment
    out["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    return out


def bc_steps_per_s(steps: int, repeats: int) -> float:
    """Adam steps/s of behaviour cloning (algos/core/bc.py, fixed-step schedule): the 2 x 200
    policy on HalfCheetah shapes, batch 256 (BREMEN's), 20k states."""
    from algos.core.bc import weighted_bc
    obs, act, _ = synthetic_data(20_000)
    data = {"obs": obs.numpy(), "act": act.clamp(-1, 1).numpy()}
    torch.manual_seed(0)
    policy = GaussianPolicy(OBS, ACT, hidden=(200, 200))
    fn = lambda: weighted_bc(policy, data, None, lr=5e-4, batch_size=256, steps=steps,  # noqa: E731
                             generator=torch.Generator().manual_seed(0))
    fn()
    return steps / _timed(fn, repeats)


def profile_fit(n: int = 5000) -> str:
    """torch.profiler table of one paper-size fit epoch (top operators by self CPU time)."""
    obs, act, nxt = synthetic_data(n)
    model = DynamicsEnsemble(OBS, ACT, members=MEMBERS, hidden=SIZES["paper"]["hidden"])
    data = {"obs": obs, "act": act, "next_obs": nxt}
    fit = lambda: ModelTrainer(lr=1e-3, batch_size=1000).fit(model, data, None, Patience(10, max_epochs=1),  # noqa: E731
                                                             torch.Generator().manual_seed(0))
    fit()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fit()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock, or this process's CPU time (use with --threads 1 on a busy machine)")
    args = parser.parse_args()
    res = run(args.quick, args.threads, args.clock)
    width = max(len(k) for k in res)
    for key, value in res.items():
        text = f"{value:,.3f}" if isinstance(value, float) and value < 10 else (
            f"{value:,.0f}" if isinstance(value, float) else str(value))
        print(f"{key:<{width}}  {text}")
    if args.profile:
        print(profile_fit())


if __name__ == "__main__":
    main()
