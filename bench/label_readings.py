"""The label distributions of every reading of eqs. 9, 12 and 22 on real data, at the paper's
network sizes (the evidence for the decision rule in docs/paper_to_code.md, "Readings").

Per env: a labeler of K = 3 probabilistic members of 2 x 1024 (MUSBO's P-hat-phi, config/paper.yaml
run.defaults.labeler) is fitted on a real first batch B(1) (uniform random actions), then labels a
second, fresh uniform-random batch B(2):
  eq. 9   U = 1 - clip(max_k d(s', mu_k(s, a)), 0, 1)           under d = raw | std_sum | std_mean
  eq. 12  U = exp(-alpha d(mu_k(s, a), mu_l(s, a))), k != l     under the same three distances
  eq. 22  the noise std s_u = U (sigma) or sqrt(U) (variance), U = eq. 12 at (s, a') with
          a' = 0 + N(0, sigma_c^2) (a policy mean of 0: pi_init cloned from B(1) is ~0), and the
          share of action entries a' + N(0, s_u^2) outside [-1, 1] (the env clips them).
For each: mean, 10/50/90 %, share within 0.01 of 0 and of 1.

    nice -n 10 python bench/label_readings.py [--rows 0 (= the paper's B)] [--epochs 20] [--envs ...] [--out bench/label_readings.json]
    python bench/label_readings.py --eq12-timing     # eq. 12: all K members vs two per sample
    python bench/label_readings.py --decide          # the rule applied to the saved results, and the tables
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import resolve_run_config  # noqa: E402
from algos.core.dataset import DeploymentDataset  # noqa: E402
from algos.core.training import fit_ensemble, make_ensemble  # noqa: E402
from algos.musbo import MUSBO, label_distance  # noqa: E402
from analysis.mechanisms import CLIPPED_SHARE, DEGENERATE_SHARE, LABEL_TOL  # noqa: E402  (the rule's thresholds, one place)
from envs.collector import collect  # noqa: E402

DISTANCES = ("raw", "std_sum", "std_mean")
ENVS = ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run")


def describe(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"mean": float(values.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90),
            "share_at_0": float(np.mean(np.abs(values) <= LABEL_TOL)),
            "share_at_1": float(np.mean(np.abs(values - 1) <= LABEL_TOL))}


@torch.no_grad()
def readings(labeler, batch: dict, alpha: float, clip_max: float, sigma_c: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    obs, act, next_obs = (torch.as_tensor(batch[k]) for k in ("obs", "act", "next_obs"))
    d = obs.shape[1]
    inv_std = 1.0 / labeler.target_norm.std[:d]
    n, K = len(obs), labeler.members
    k = torch.as_tensor(rng.integers(K, size=n))
    l = (k + torch.as_tensor(rng.integers(1, K, size=n))) % K
    rows = torch.arange(n)
    a_prime = torch.as_tensor(rng.normal(0.0, sigma_c, size=act.shape), dtype=torch.float32)
    mu = labeler.predict(obs, act).next_obs                      # [K, n, d]
    mu_explore = labeler.predict(obs, a_prime.clamp(-1, 1)).next_obs
    out = {"eq9": {}, "eq12": {}, "eq22": {}}
    for dist in DISTANCES:
        err = label_distance(next_obs - mu, dist, inv_std).clamp(0.0, clip_max)    # [K, n]
        out["eq9"][dist] = describe((1.0 - err.max(0).values).numpy())             # max_error (the default)
        u12 = torch.exp(-alpha * label_distance(mu[k, rows] - mu[l, rows], dist, inv_std))
        out["eq12"][dist] = describe(u12.numpy())
        u22 = torch.exp(-alpha * label_distance(mu_explore[k, rows] - mu_explore[l, rows], dist, inv_std)).numpy()
        for reading, std in (("sigma", u22), ("variance", np.sqrt(u22))):
            action = a_prime.numpy() + rng.normal(size=a_prime.shape) * std[:, None]
            out["eq22"][f"{dist}/{reading}"] = {**{f"std_{k}": v for k, v in describe(std).items() if k in ("mean", "p10", "p50", "p90")},
                                                "clipped_share": float(np.mean(np.abs(action) > 1))}
    return out


def measure_env(env: str, rows: int, epochs: int, seed: int) -> dict:
    cfg = resolve_run_config("paper", "musbo", env, "500k", seed, [f"labeler.max_epochs={epochs}"])
    rows = rows or int(cfg["batch_size"])  # 0: the paper's B at 500k (50k Walker2d/Hopper, 100k the others)
    t0 = time.perf_counter()
    first = collect(env, rows, None, seed=seed)
    second = collect(env, rows, None, seed=seed + 1000)
    t_collect = time.perf_counter() - t0
    obs_dim, act_dim = first["obs"].shape[1], first["act"].shape[1]
    # MUSBO's own labeler, fitted on B(1) as MUSBO.train fits it (its holdout split and stopping
    # rule), with at most `epochs` epochs
    labeler = make_ensemble(cfg["labeler"], obs_dim, act_dim, torch.device("cpu"), probabilistic=True)
    stopping = MUSBO.stopping(SimpleNamespace(cfg=cfg), "labeler")  # MUSBO's rule, without building a MUSBO
    dataset = DeploymentDataset(obs_dim, act_dim)
    dataset.add(first)
    t0 = time.perf_counter()
    fit = fit_ensemble(labeler, dataset, cfg["labeler"], torch.Generator().manual_seed(seed), stopping)
    t_fit = time.perf_counter() - t0
    m = cfg["musbo"]
    out = readings(labeler, second, m["alpha"], m["label_clip_max"], m["exploration_const_std"], seed)
    out.update(rows=rows, max_epochs=epochs, members=labeler.members, hidden=list(cfg["labeler"]["hidden"]),
               collect_seconds=t_collect, fit_seconds=t_fit,
               fit={k: v for k, v in (fit or {}).items() if isinstance(v, (int, float))})
    return out


def eq12_timing(rows_list=(50, 100, 200), obs_dim=17, act_dim=6, repeats=100) -> dict:
    """Eq. 12 at TRPO's per-step batch (50-200 parallel rollouts), K = 3 members of 2 x 1024:
    all members in one batched call then two gathered, vs computing only the two members each
    sample needs (predict(member=LongTensor): one call per member on its samples, twice)."""
    from algos.core.ensemble import DynamicsEnsemble
    torch.manual_seed(0)
    model = DynamicsEnsemble(obs_dim, act_dim, members=3, hidden=(1024, 1024), probabilistic=True)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n in rows_list:
        obs, act = torch.randn(n, obs_dim), torch.randn(n, act_dim)
        k = torch.randint(3, (n,), generator=gen)
        l = (k + torch.randint(1, 3, (n,), generator=gen)) % 3
        rows = torch.arange(n)

        def all_members():
            mu = model.predict(obs, act).next_obs
            return mu[k, rows] - mu[l, rows]

        def two_members():
            return model.predict(obs, act, member=k).next_obs - model.predict(obs, act, member=l).next_obs

        assert torch.allclose(all_members(), two_members(), atol=1e-4)
        times = {}
        for name, fn in (("all_k_ms", all_members), ("two_per_sample_ms", two_members)):
            fn()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times[name] = best * 1e3
        out[n] = times
    return out


# ---- the decision rule of docs/paper_to_code.md ("Readings of eqs. 9, 12 and 22"), as code ----


def degenerate(stats: dict) -> bool:
    """Eqs. 9, 12: more than 90 % of the labels within 0.01 of 0, or more than 90 % within 0.01 of 1."""
    return stats["share_at_0"] > DEGENERATE_SHARE or stats["share_at_1"] > DEGENERATE_SHARE


def decide(results: dict) -> dict:
    """The default per equation: as written unless degenerate on any env, else the least departure
    degenerate on none (std_sum, then std_mean), else the one degenerate on the fewest envs (ties:
    the same order). Eq. 22 under the picked eq. 12 distance: sigma unless more than 25 % of the
    action entries are clipped on any env, else variance if that is degenerate on no env, else sigma."""
    envs = sorted(results)
    out = {}
    for eq in ("eq9", "eq12"):
        bad = {d: [e for e in envs if degenerate(results[e][eq][d])] for d in DISTANCES}
        pick = next((d for d in DISTANCES if not bad[d]), None) or min(DISTANCES, key=lambda d: (len(bad[d]), DISTANCES.index(d)))
        out[eq] = {"pick": pick, "degenerate_on": bad}
    d12 = out["eq12"]["pick"]
    bad = {r: [e for e in envs if results[e]["eq22"][f"{d12}/{r}"]["clipped_share"] > CLIPPED_SHARE]
           for r in ("sigma", "variance")}
    out["eq22"] = {"pick": "sigma" if not bad["sigma"] or bad["variance"] else "variance", "degenerate_on": bad}
    return out


def markdown(results: dict) -> str:
    lines = ["| env | rows, labeler epochs | eq. | distance | mean | p10 / p50 / p90 | share at 0 | share at 1 | degenerate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for env, r in results.items():
        size = f"{r['rows']}, {r.get('fit', {}).get('epochs', '?')}"
        for eq in ("eq9", "eq12"):
            for d, st in r[eq].items():
                lines.append(f"| {env} | {size} | {eq[2:]} | {d} | {st['mean']:.3f} | {st['p10']:.3f} / {st['p50']:.3f} / "
                             f"{st['p90']:.3f} | {st['share_at_0']:.3f} | {st['share_at_1']:.3f} | "
                             f"{'yes' if degenerate(st) else 'no'} |")
    lines += ["", "| env | eq. 12 distance | eq. 22 reading | noise std mean | p10 / p50 / p90 | clipped share | degenerate |",
              "|---|---|---|---|---|---|---|"]
    for env, r in results.items():
        for key, st in r["eq22"].items():
            d, reading = key.split("/")
            lines.append(f"| {env} | {d} | {reading} | {st['std_mean']:.3f} | {st['std_p10']:.3f} / {st['std_p50']:.3f} / "
                         f"{st['std_p90']:.3f} | {st['clipped_share']:.3f} | "
                         f"{'yes' if st['clipped_share'] > CLIPPED_SHARE else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=0, help="transitions per batch; 0 = the paper's B at 500k")
    parser.add_argument("--epochs", type=int, default=20, help="at most this many labeler epochs on B(1) (early stopping, patience 3, may end sooner)")
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "label_readings.json")
    parser.add_argument("--eq12-timing", action="store_true")
    parser.add_argument("--decide", action="store_true", help="apply the rule to --out and print the tables")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eq12_timing:
        for n, t in eq12_timing().items():
            print(f"rows {n:4d}  all K batched {t['all_k_ms']:.3f} ms   two per sample {t['two_per_sample_ms']:.3f} ms")
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.decide:
        print(markdown(results))
        print(json.dumps(decide(results), indent=1))
        return
    for env in args.envs:
        print(f"{env}: 2 random batches of {args.rows or 'B'} transitions, labeler <= {args.epochs} epochs", file=sys.stderr, flush=True)
        results[env] = measure_env(env, args.rows, args.epochs, args.seed)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        for eq in ("eq9", "eq12"):
            for dist, s in results[env][eq].items():
                print(f"  {eq:5s} {dist:9s} mean {s['mean']:.3f}  p10/50/90 {s['p10']:.3f}/{s['p50']:.3f}/{s['p90']:.3f}"
                      f"  at 0 {s['share_at_0']:.3f}  at 1 {s['share_at_1']:.3f}", file=sys.stderr, flush=True)
        for key, s in results[env]["eq22"].items():
            print(f"  eq22  {key:18s} std mean {s['std_mean']:.3f}  clipped {s['clipped_share']:.3f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
