"""Speed of one TRPO iteration (policy_update) at the paper's settings, split by phase; before /
after (issue 15) side by side; the Fisher-vector product variants; GAE alone at both paper
shapes; the numpy policy's per-call latency (batch 1).

    python bench/bench_trpo.py [--quick] [--profile] [--threads N]

Paper settings: 50k imagined transitions (200 rollouts x 250 steps), obs 17, act 6, policy
2 x 200, 10 CG iterations, 10 line-search steps, linear baseline. `--profile` prints the
torch.profiler table of one update (where the time goes).

"after" is the current default (BREMEN's state-dependent log-std, BREMEN's line search, GAE as
one batched matrix product, conjugate gradient without host syncs); "before" is the project's
previous update, rebuilt here: global log-std, KL-checked backtracking (0.8), bootstrap at the
cut-off, GAE as a Python loop over time, and conjugate gradient with a host sync per step
(`if r.r < tol: break`). Host syncs are aten::_local_scalar_dense calls counted by torch.profiler
(float()/bool()/item() of a tensor; .tolist() reads are not aten ops and are listed apart).
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.func import functional_call, jvp, vjp

from algos.core import trpo
from algos.core.policy import GaussianPolicy
from algos.core.trpo import (LinearBaseline, fisher_vector_product, flat, gae, policy_parameters, policy_update,
                             unflat)
from timing import best_time  # bench/ is on sys.path (script dir, or bench/__main__.py)

OBS_DIM, ACT_DIM, HIDDEN = 17, 6, (200, 200)
TRPO = dict(gamma=0.99, lam=0.95, normalize_advantages=True, delta=0.05, cg_iters=10, cg_damping=0.1,
            line_search_steps=10)
AFTER = dict(log_std="state_dependent", line_search="bremen", line_search_decay=0.5, bootstrap_cutoff=False)
BEFORE = dict(log_std="global", line_search="kl_backtrack", line_search_decay=0.8, bootstrap_cutoff=True)


# ---------------------------------------------------------------- the previous implementation
def loop_gae(rew, values, terminated, gamma, lam, last_values=None, alive=None):
    """The previous GAE: a Python loop over time (same numbers as trpo.gae)."""
    ends = terminated.bool().clone()
    ends[-1] = True
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    if last_values is not None:
        next_values[-1] = last_values
    zero = torch.zeros((), dtype=values.dtype)
    next_values = torch.where(terminated.bool() if last_values is not None else ends, zero, next_values)
    delta = rew + gamma * next_values - values
    if alive is not None:
        delta = torch.where(alive > 0, delta, zero)
    carry_on = (~ends).to(values.dtype)
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[0])
    for t in reversed(range(rew.shape[0])):
        next_adv = delta[t] + gamma * lam * carry_on[t] * next_adv
        adv[t] = next_adv
    return adv, adv + values


def syncing_conjugate_gradient(Avp, b, iters, residual_tol=1e-10):
    """The previous CG: `if rr < residual_tol: break` reads r.r on the host every step."""
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class previous_update:
    """Within the block, policy_update runs the previous GAE and CG."""

    def __enter__(self):
        self.saved = trpo.gae, trpo.conjugate_gradient
        trpo.gae, trpo.conjugate_gradient = loop_gae, syncing_conjugate_gradient

    def __exit__(self, *exc):
        trpo.gae, trpo.conjugate_gradient = self.saved


def host_syncs(fn) -> int:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def make_problem(T: int, N: int, seed: int = 0, log_std: str = "global"):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    policy = GaussianPolicy(OBS_DIM, ACT_DIM, hidden=HIDDEN, log_std=log_std)
    obs = torch.randn(T + 1, N, OBS_DIM, generator=gen).cumsum(0) * 0.3  # a drifting trajectory
    policy.set_obs_normalizer(obs.reshape(-1, OBS_DIM).mean(0), obs.reshape(-1, OBS_DIM).std(0))
    with torch.no_grad():
        act = policy.sample(obs[:-1].reshape(-1, OBS_DIM), gen).reshape(T, N, ACT_DIM)
    rew = obs[1:, :, 8] - 0.1 * act.pow(2).sum(-1)  # HalfCheetah-like: velocity minus control cost
    timestep = torch.arange(T).unsqueeze(1).expand(T, N)
    rollout = dict(obs=obs[:-1], act=act, rew=rew, next_obs=obs[1:], terminated=torch.zeros(T, N, dtype=torch.bool),
                   alive=torch.ones(T, N), timestep=timestep)
    weights = torch.rand(T, N, generator=gen)
    return policy, rollout, weights, gen


def torch_func_fvp(policy: GaussianPolicy, obs: torch.Tensor, damping: float):
    """The Gauss-Newton product through torch.func (jvp per call, one reusable vjp): the generic
    alternative to the hand-written PolicyLinearization, for comparison only."""
    names = [n for n, _ in policy.named_parameters() if n != "log_std"]
    primals = tuple(p.detach() for p in policy.mean_parameters())

    def mean_of(*params):
        return functional_call(policy, dict(zip(names, params)), (obs,))[0]

    _, vjp_fn = vjp(mean_of, *primals)
    scale = torch.exp(-2.0 * policy.clamped_log_std().detach()) / obs.shape[0]
    n_mean = sum(p.numel() for p in primals)

    def fvp(v):
        _, jv = jvp(mean_of, primals, tuple(unflat(v[:n_mean], primals)))
        return torch.cat([flat(vjp_fn(jv * scale)), 2.0 * v[n_mean:]]) + damping * v
    return fvp


def bench_fvp(policy, obs, repeats: int) -> dict:
    v = torch.randn(sum(p.numel() for p in policy_parameters(policy)), generator=torch.Generator().manual_seed(0))
    out, reference = {}, None
    variants = [("gauss_newton (hand-written)", lambda o: fisher_vector_product(policy, o, 0.1, "gauss_newton")),
                ("gauss_newton (torch.func)", lambda o: torch_func_fvp(policy, o, 0.1)),
                ("double_backward", lambda o: fisher_vector_product(policy, o, 0.1, "double_backward"))]
    for name, build in variants:
        setup = best_time(lambda: build(obs), 1)
        fvp = build(obs)
        result = fvp(v)
        reference = result if reference is None else reference
        out[name] = dict(setup_ms=1e3 * setup, per_fvp_ms=1e3 * best_time(lambda: fvp(v), repeats),
                         per_fvp_cpu_ms=1e3 * best_time(lambda: fvp(v), repeats, time.process_time),
                         rel_diff=float((result - reference).norm() / reference.norm()))
    sub = obs[: max(1, obs.shape[0] // 5)]
    fvp = fisher_vector_product(policy, sub, 0.1, "gauss_newton")
    fvp(v)
    out["gauss_newton, fvp_subsample 0.2"] = dict(
        setup_ms=1e3 * best_time(lambda: fisher_vector_product(policy, sub, 0.1, "gauss_newton"), 1),
        per_fvp_ms=1e3 * best_time(lambda: fvp(v), repeats),
        per_fvp_cpu_ms=1e3 * best_time(lambda: fvp(v), repeats, time.process_time), rel_diff=float("nan"))
    return out


def bench_update(T, N, repeats, fvp_subsample=1.0, fvp_method="gauss_newton", version: str = "after") -> dict:
    """policy_update, best of `repeats` after one warm-up; version "after" (the defaults) or
    "before" (the previous update); syncs counted on one more call."""
    settings = dict(AFTER if version == "after" else BEFORE)
    log_std = settings.pop("log_std")
    policy, rollout, weights, gen = make_problem(T, N, log_std=log_std)
    baseline = LinearBaseline(OBS_DIM, **({} if version == "after" else dict(time_scale=1000.0)),
                              normalize=policy.normalize if version == "after" else None)
    runs = []

    def one():
        p = GaussianPolicy(OBS_DIM, ACT_DIM, hidden=HIDDEN, log_std=log_std)
        p.load_state_dict(policy.state_dict())
        cpu = time.process_time()
        stats = policy_update(p, baseline, rollout, weights, **TRPO, **settings, fvp_subsample=fvp_subsample,
                              fvp_method=fvp_method, generator=gen)
        return dict(stats, cpu_total=time.process_time() - cpu)

    with previous_update() if version == "before" else nullcontext():
        for _ in range(repeats + 1):  # the first call warms up (and fits the baseline once)
            runs.append(one())
        syncs = host_syncs(one)
    best = min(runs[1:], key=lambda s: s["time_total"])
    out = {k: best[k] for k in ("time_values_gae", "time_grad", "time_cg", "time_line_search",
                                "time_baseline_fit", "time_total", "step_fraction", "kl", "backtracks")}
    out["cpu_total"] = min(r["cpu_total"] for r in runs[1:])  # CPU seconds, all threads
    out["host_syncs"] = syncs
    return out


def bench_cg_syncs(T: int, N: int) -> dict:
    """Host syncs inside 10 CG steps on the Fisher of the paper-size batch: previous vs current."""
    policy, rollout, _, _ = make_problem(T, N, log_std="state_dependent")
    obs, act = rollout["obs"].reshape(-1, OBS_DIM), rollout["act"].reshape(-1, ACT_DIM)
    adv = torch.randn(obs.shape[0], generator=torch.Generator().manual_seed(0))
    lin = policy.linearization(obs)
    grad = trpo.surrogate_gradient(policy, lin, act, adv, None)
    fvp = fisher_vector_product(policy, obs, 0.1, linearization=lin)
    return {"before": host_syncs(lambda: syncing_conjugate_gradient(fvp, grad, 10)),
            "after": host_syncs(lambda: trpo.conjugate_gradient(fvp, grad, 10))}


def bench_gae(repeats: int, shapes) -> dict:
    """GAE alone (values given) at the paper's shapes: the loop over time vs the batched product."""
    out = {}
    for T, N in shapes:
        gen = torch.Generator().manual_seed(0)
        rew, values = torch.randn(T, N, generator=gen), torch.randn(T, N, generator=gen)
        terminated = torch.rand(T, N, generator=gen) < 0.01
        loop = best_time(lambda: loop_gae(rew, values, terminated, 0.99, 0.95), repeats)
        vec = best_time(lambda: gae(rew, values, terminated, 0.99, 0.95), repeats)
        diff = float((loop_gae(rew, values, terminated, 0.99, 0.95)[0]
                      - gae(rew, values, terminated, 0.99, 0.95)[0]).abs().max())
        out[f"{T}x{N}"] = dict(loop_ms=1e3 * loop, vectorised_ms=1e3 * vec, max_abs_diff=diff)
    return out


def bench_numpy_policy(calls: int) -> dict:
    policy, *_ = make_problem(2, 4)
    obs = np.random.default_rng(0).standard_normal((1, OBS_DIM)).astype(np.float32)
    out = {}
    for mode in ("deterministic", "fixed_std"):
        fn = policy.numpy_policy(mode, std=0.1, seed=0)
        fn(obs)
        out[f"numpy_policy {mode}"] = 1e6 * best_time(lambda: [fn(obs) for _ in range(calls)], 3) / calls

    def torch_call():
        with torch.no_grad():
            for _ in range(calls):
                policy.mean_action(torch.from_numpy(obs)).numpy()
    out["torch mean_action"] = 1e6 * best_time(torch_call, 3) / calls
    return out


def run(quick: bool) -> dict:
    T, N = (50, 40) if quick else (250, 200)
    repeats = 1 if quick else 2
    policy, rollout, _, _ = make_problem(T, N)
    obs = rollout["obs"].reshape(-1, OBS_DIM)
    return dict(
        transitions=T * N, threads=torch.get_num_threads(),
        update=bench_update(T, N, repeats),
        update_before=bench_update(T, N, repeats, version="before"),
        update_fvp_subsample_0_2=bench_update(T, N, repeats, fvp_subsample=0.2),
        update_double_backward=bench_update(T, N, repeats, fvp_method="double_backward"),
        cg_host_syncs=bench_cg_syncs(T, N),
        gae=bench_gae(repeats + 1, [(50, 40)] if quick else [(250, 200), (1000, 50)]),
        fvp=bench_fvp(policy, obs, repeats=2 if quick else 3),
        act_latency_us=bench_numpy_policy(2000 if quick else 20000),
    )


def print_table(res: dict) -> None:
    print(f"TRPO iteration on {res['transitions']} transitions, torch threads {res['threads']}")
    phases = ("time_values_gae", "time_grad", "time_cg", "time_line_search", "time_baseline_fit", "time_total")
    print("wall seconds by phase (best of the repeats); cpu = process CPU seconds of the update, all threads")
    print(f"{'policy_update':26s}" + "".join(f"{p[5:]:>13s}" for p in phases) + f"{'cpu':>8s}{'step':>6s}"
          f"{'syncs':>7s}")
    for key in ("update_before", "update", "update_fvp_subsample_0_2", "update_double_backward"):
        row = res[key]
        print(f"{key:26s}" + "".join(f"{row[p]:13.3f}" for p in phases)
              + f"{row['cpu_total']:8.2f}{row['step_fraction']:6.2f}{row['host_syncs']:7d}")
    print("(update_before: the previous update; update: the current defaults. syncs: aten::_local_scalar_dense "
          "per update, besides one .tolist() per trpo_step and one per policy_update)")
    cg = res["cg_host_syncs"]
    print(f"host syncs inside 10 CG steps: before {cg['before']}, after {cg['after']}")
    print(f"\n{'GAE alone':14s}{'loop ms':>10s}{'vectorised ms':>15s}{'max |diff|':>12s}")
    for shape, row in res["gae"].items():
        print(f"{shape:14s}{row['loop_ms']:10.1f}{row['vectorised_ms']:15.1f}{row['max_abs_diff']:12.1e}")
    print(f"\n{'Fisher-vector product':34s}{'setup ms':>10s}{'per FVP ms':>12s}{'cpu ms':>9s}{'rel diff':>10s}")
    for name, row in res["fvp"].items():
        print(f"{name:34s}{row['setup_ms']:10.1f}{row['per_fvp_ms']:12.1f}{row['per_fvp_cpu_ms']:9.1f}"
              f"{row['rel_diff']:10.1e}")
    print(f"\n{'acting, batch 1':34s}{'us / call':>12s}")
    for name, us in res["act_latency_us"].items():
        print(f"{name:34s}{us:12.1f}")


def profile_update(T: int, N: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    policy, rollout, weights, gen = make_problem(T, N)
    baseline = LinearBaseline(OBS_DIM)
    policy_update(policy, baseline, rollout, weights, **TRPO, generator=gen)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        policy_update(policy, baseline, rollout, weights, **TRPO, generator=gen)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile_update(*((50, 40) if args.quick else (250, 200)))
    else:
        print_table(run(args.quick))
