"""Eq. 12's labels at imagined states, judged by the degeneracy rule of docs/paper_to_code.md
("Readings of eqs. 9, 12 and 22"), re-applied where TRPO uses them (issue 22): each TRPO
iteration's imagined batch is a labelled batch, as B(2) was in bench/label_readings.py.

    python bench/eq12_inrun.py table [DIR ...] [--source policy|eq12_readings]
        # default DIRs: results/mini/runs/musbo, readings/eq12_raw, readings/eq12_std_mean
    python bench/eq12_inrun.py measure --envs hopper ... --seeds 0 1 --out DIR [--profile mini]

`table` reads every MUSBO run's scalars.csv under the DIRs (the ablation without weighting has no
eq. 12 labels), per env and eq. 12 distance:
  - phase policy (what every run records, eq12_p10/p50/p90 per iteration at the run's own
    distance): a batch has more than 90 % of its labels within 0.01 of 1 exactly when its p10
    is >= 0.99 (labels exp(-alpha d) are <= 1), within 0.01 of 0 when its p90 is <= 0.01; the
    pooled share over all batches (equal sizes) is bounded by the quantiles (`share_bounds`; a
    lower bound of 0.9, every batch's p10 >= 0.99, counts as degenerate); where the run records
    eq12_share_at_0/1, the pooled share itself.
  - phase eq12_readings (written by `measure`): the labels of EVERY distance at the same imagined
    (s, a) and member pairs, at alpha = musbo.alpha, with their shares within 0.01 of 0 and 1 and
    the median distance (alpha = ln 2 / median gives a median label of 0.5: musbo.eq12_alpha=calibrated).
`measure` runs MUSBO (the profile's sizes, I x B = 500k) with MUSBO.eq12_distance wrapped to record
every distance reading of each imagined batch; the run itself is unchanged (same draws).
Thresholds: analysis/mechanisms.py (LABEL_TOL, DEGENERATE_SHARE), as the rule states them.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from algos.config import read_config_file  # noqa: E402
from analysis.mechanisms import DEGENERATE_SHARE, LABEL_TOL  # noqa: E402

DISTANCES = ("raw", "std_sum", "std_mean")
ENVS = ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run")
PHASE = "eq12_readings"


def share_bounds(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, at_one: bool = True) -> tuple[float, float]:
    """(low, high) of the pooled share of labels within LABEL_TOL of 1 (or of 0) over batches of
    equal size, from each batch's 10/50/90 % quantiles."""
    near = (lambda q: q >= 1 - LABEL_TOL) if at_one else (lambda q: q <= LABEL_TOL)
    first, mid, last = (p10, p50, p90) if at_one else (p90, p50, p10)   # the quantile nearest the bound first
    low = np.select([near(first), near(mid), near(last)], [0.9, 0.5, 0.1], 0.0)
    high = np.select([near(first), near(mid), near(last)], [1.0, 0.9, 0.5], 0.1)
    return float(low.mean()), float(high.mean())


def _wide(scalars: pd.DataFrame, phase: str) -> pd.DataFrame:
    s = scalars[scalars.phase == phase]
    return s.pivot_table(index=["deployment", "step"], columns="name", values="value").reset_index()


def collect(roots, sources=("policy", PHASE)) -> pd.DataFrame:
    """One row per TRPO iteration of every MUSBO run under `roots` and per distance it reports:
    source (policy: the run's own distance; eq12_readings: measured), env, distance, p10, p50,
    p90, share_at_0, share_at_1 (NaN where not recorded), median_d."""
    rows = []
    for root in roots:
        for f in sorted(Path(root).glob("**/seed*/scalars.csv")):
            cfg_file = f.parent / "config.yaml"
            if not cfg_file.is_file() or "stale-" in str(f):
                continue
            cfg = read_config_file(cfg_file)
            if cfg.get("algo") != "musbo" or not cfg["musbo"]["uncertainty_weighting"]:
                continue
            scalars = pd.read_csv(f)
            run = str(f.parent.relative_to(root))
            own = _wide(scalars, "policy")
            if "eq12_p10" in own and "policy" in sources:
                for _, r in own.iterrows():
                    rows.append({"run": run, "source": "policy", "env": cfg["env"],
                                 "distance": cfg["musbo"]["eq12_distance"], "alpha": cfg["musbo"]["alpha"],
                                 **{q: r.get(f"eq12_{q}", np.nan) for q in ("p10", "p50", "p90", "share_at_0",
                                                                             "share_at_1")}, "median_d": np.nan})
            measured = _wide(scalars, PHASE)
            for d in DISTANCES if f"eq12_{DISTANCES[0]}_p10" in measured and PHASE in sources else ():
                for _, r in measured.iterrows():
                    rows.append({"run": run, "source": PHASE, "env": cfg["env"], "distance": d,
                                 "alpha": cfg["musbo"]["alpha"],
                                 **{q: r[f"eq12_{d}_{q}"] for q in ("p10", "p50", "p90", "share_at_0", "share_at_1")},
                                 "median_d": r[f"median_d_{d}"]})
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per source, env and distance: batches, runs, mean quantiles, the share of batches with more
    than 90 % of their labels within 0.01 of 1 (p10 >= 0.99), the pooled share at 1 and at 0 (exact
    where recorded, else its quantile bounds), the median distance and the rule's verdict."""
    out = []
    for (source, env, dist), g in rows.groupby(["source", "env", "distance"], sort=False):
        exact = g.share_at_1.notna().all()
        low1, high1 = ((g.share_at_1.mean(),) * 2 if exact else share_bounds(g.p10, g.p50, g.p90))
        low0, high0 = ((g.share_at_0.mean(),) * 2 if exact else share_bounds(g.p10, g.p50, g.p90, at_one=False))
        at_least = DEGENERATE_SHARE - 1e-9 if not exact else DEGENERATE_SHARE  # quantile bounds: >= 90 %
        degenerate = ("yes" if max(low1, low0) > at_least else
                      "no" if max(high1, high0) <= DEGENERATE_SHARE else "undecided")
        out.append({"source": source, "env": env, "distance": dist, "runs": g.run.nunique(), "batches": len(g),
                    "p10": g.p10.mean(), "p50": g.p50.mean(), "p90": g.p90.mean(),
                    "batches_degenerate": float((g.p10 >= 1 - LABEL_TOL).mean() + (g.p90 <= LABEL_TOL).mean()),
                    "share_at_1": (low1, high1), "share_at_0": (low0, high0), "median_d": g.median_d.median(),
                    "calibrated_alpha": math.log(2) / g.median_d.median() if g.median_d.notna().any() else np.nan,
                    "degenerate": degenerate})
    return pd.DataFrame(out)


def _share(bounds) -> str:
    low, high = bounds
    return f"{low:.3f}" if math.isclose(low, high) else f"{low:.2f}-{high:.2f}"


def markdown(summary: pd.DataFrame) -> str:
    lines = ["| labels | env | distance | runs, batches | mean p10 / p50 / p90 | batches > 90 % at 1 | share at 1 | "
             "share at 0 | median d | ln 2 / median d | degenerate |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {'measured, every distance' if r.source == PHASE else 'committed run'} | {r.env} | {r.distance} "
                     f"| {r.runs}, {r.batches} | {r.p10:.3f} / {r.p50:.3f} / {r.p90:.3f} | {r.batches_degenerate:.2f} | "
                     f"{_share(r.share_at_1)} | {_share(r.share_at_0)} | "
                     + (f"{r.median_d:.3g} | {r.calibrated_alpha:.3g}" if np.isfinite(r.median_d) else "- | -")
                     + f" | {r.degenerate} |")
    return "\n".join(lines)


def measure(envs, seeds, out: Path, profile: str) -> None:
    import torch

    from algos import musbo
    from algos.run import main as run_main

    original = musbo.MUSBO.eq12_distance
    step = {}

    def recording(self, diff):
        key = (id(self), self.scalars.deployment)
        step[key] = step.get(key, -1) + 1
        for reading in DISTANCES:
            d = musbo.label_distance(diff, reading, self._inv_std())
            u = torch.exp(-self.m["alpha"] * d).cpu().numpy()
            self.scalars.distribution(PHASE, f"eq12_{reading}", u, step[key], bounds=(0, 1))
            self.scalars.add(PHASE, f"median_d_{reading}", float(d.median()), step[key])
        return original(self, diff)

    musbo.MUSBO.eq12_distance = recording
    try:
        for env in envs:
            for seed in seeds:
                run = out / "runs" / "musbo" / env / "500k" / f"seed{seed}"
                code = run_main(["--algo", "musbo", "--env", env, "--budget", "500k", "--seed", str(seed),
                                 "--profile", profile, "--out", str(run)])
                print(f"{env} seed {seed}: exit {code}", file=sys.stderr, flush=True)
    finally:
        musbo.MUSBO.eq12_distance = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="the table and verdicts from scalars.csv files")
    t.add_argument("roots", nargs="*", type=Path, default=[ROOT / "results" / "mini" / d for d in (
        "runs/musbo", "readings/eq12_raw", "readings/eq12_std_mean")])
    t.add_argument("--source", choices=("policy", PHASE), default=None,
                   help="only the runs' own labels (policy) or only the measured readings (default: both)")
    m = sub.add_parser("measure", help="MUSBO runs that record every distance reading")
    m.add_argument("--envs", nargs="+", default=list(ENVS))
    m.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    m.add_argument("--profile", default="mini")
    m.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "measure":
        measure(args.envs, args.seeds, args.out, args.profile)
        return
    rows = collect(args.roots, (args.source,) if args.source else ("policy", PHASE))
    if rows.empty:
        sys.exit(f"no MUSBO scalars.csv with eq. 12 labels under {', '.join(map(str, args.roots))}")
    print(markdown(summarise(rows)))


if __name__ == "__main__":
    main()
