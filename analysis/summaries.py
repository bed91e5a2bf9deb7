"""Numbers derived from the runs, shared by figures, tables and claims: means with CIs over
seeds, final returns, normalised scores and their aggregates, novelty per deployment."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.results import SECTION5_BUDGET, RunKey, Study

SUMMARY_COLUMNS = ["mean", "low", "high", "n"]


def ci_over_seeds(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by`: the mean of `value` over the group's rows (one per seed) and its
    95 % bootstrap CI; n = number of seeds (n = 1: NaN bounds)."""
    if df.empty:
        return pd.DataFrame(columns=by + SUMMARY_COLUMNS)
    rows = []
    for group, sub in df.groupby(by, sort=True):
        ci = metrics.bootstrap_ci(sub[value].to_numpy())
        rows.append((*group, ci.point, ci.low, ci.high, int(sub[value].notna().sum())))
    return pd.DataFrame(rows, columns=by + SUMMARY_COLUMNS)


def ci_at(cis: pd.DataFrame, **where) -> tuple[metrics.Interval, int | None]:
    """The CI of `ci_over_seeds`'s row matching `where` (column=value) and its number of seeds;
    (NO_ESTIMATE, None) when no row matches."""
    r = cis
    for k, v in where.items():
        r = r[r[k] == v] if len(r) else r
    if r.empty:
        return metrics.NO_ESTIMATE, None
    r = r.iloc[0]
    return metrics.Interval(float(r["mean"]), float(r.low), float(r.high)), int(r["n"])


def main_return_cis(study: Study) -> pd.DataFrame:
    """Eval-return CIs over the profile's seeds of the main grid, per algorithm, env, budget and
    deployment (as `ci_over_seeds`)."""
    runs = study.metrics[study.metrics.kind == "runs"]
    return ci_over_seeds(runs[runs.seed.isin(study.seeds)], ["name", "env", "budget", "deployment"], "eval_return_mean")


def final_returns(study: Study) -> pd.DataFrame:
    """One row per complete main-grid run: the eval return after its last deployment."""
    m = study.metrics
    m = m[m.kind == "runs"]
    if m.empty:
        return pd.DataFrame(columns=["name", "env", "budget", "seed", "final_return"])
    planned = m.env.map(study.deployments)
    last = m[m.deployment == planned]
    return (last[["name", "env", "budget", "seed", "eval_return_mean"]]
            .rename(columns={"eval_return_mean": "final_return"}).reset_index(drop=True))


def random_reference(study: Study) -> pd.Series:
    """Per env, the return of the uniform random policy (deployment 0 of eval_returns.csv,
    written by algos/run.py, all main runs pooled); where a run directory lacks it (older
    runs), the mean deployment-1 eval return stands in (the policy trained on the random batch)."""
    r = study.random_returns
    random = r.groupby("env")["return"].mean() if len(r) else pd.Series(dtype=float)
    m = study.metrics
    first = m[(m.kind == "runs") & (m.deployment == 1)].groupby("env").eval_return_mean.mean()
    return random.combine_first(first).rename("random")


def normalised_final_returns(study: Study) -> pd.DataFrame:
    """Final returns scaled per env to (x - random) / (best - random):
    random = the uniform random policy's return on the env (`random_reference`), so 0 = no
    better than acting at random; best = the highest mean-over-seeds final return of any
    algorithm at any budget on the env, so that 1 = the best algorithm and scores are
    comparable across budgets. Envs where best <= random get NaN scores."""
    final = final_returns(study)
    best = final.groupby(["env", "name", "budget"]).final_return.mean().groupby("env").max().rename("best")
    out = final.join(random_reference(study), on="env").join(best, on="env")
    span = out.best - out.random
    out["score"] = np.where(span > 0, (out.final_return - out.random) / span.where(span > 0), np.nan)
    return out


def _per_env(df: pd.DataFrame, envs, value: str) -> list[np.ndarray]:
    return [df.loc[df.env == e, value].to_numpy() for e in envs]


def aggregate(study: Study) -> pd.DataFrame:
    """Across envs, per budget: IQM of normalised final returns per algorithm, and the
    probability that MUSBO's final return beats each baseline's, with stratified bootstrap
    CIs (runs resampled within each env). min_seeds: the fewest runs (seeds) any env gives one
    algorithm in the estimate."""
    scores = normalised_final_returns(study)

    def min_seeds(*samples: pd.DataFrame) -> int:
        return min((int(x.groupby("env").size().min()) for x in samples if len(x)), default=0)

    rows = []
    for budget in study.cfg["budgets"]:
        b = scores[(scores.budget == budget) & scores.score.notna()]
        envs = [e for e in study.cfg["envs"] if e in set(b.env)]
        for algo in study.algos:
            a = b[b.name == algo]
            ci = metrics.stratified_iqm_ci(_per_env(a, envs, "score"))
            rows.append(("iqm", budget, algo, *ci, a.env.nunique(), len(a), min_seeds(a)))
        f = scores[scores.budget == budget]
        envs_f = [e for e in study.cfg["envs"] if e in set(f.env)]
        for base in [a for a in study.algos if a != "musbo"]:
            x, y = f[f.name == "musbo"], f[f.name == base]
            ci = metrics.probability_of_improvement(_per_env(x, envs_f, "final_return"),
                                                    _per_env(y, envs_f, "final_return"))
            n_envs = len(set(x.env) & set(y.env))
            rows.append(("poi", budget, f"musbo>{base}", *ci, n_envs, len(x) + len(y), min_seeds(x, y)))
    return pd.DataFrame(rows, columns=["measure", "budget", "name", "point", "low", "high", "n_envs", "n_runs",
                                       "min_seeds"])


def envs_missed(n_envs: int, n_grid: int) -> str:
    """' (k of n envs)' for an across-env estimate on some envs of the grid; '' on all of them,
    or on none (no estimate: shown as n/a)."""
    return "" if n_envs in (0, n_grid) else f" ({n_envs} of {n_grid} envs)"


NOVELTY_READINGS = {"cosine_similarity": "mean over all pairs", "nn_cosine_similarity": "nearest neighbour"}


def novelty_envs(study: Study) -> list[str]:
    """The envs of Table 1: every env of the grid with 5 deployments (as the paper's table),
    the novelty env first."""
    first = study.cfg["novelty_env"]
    return [first] + [e for e in study.cfg["envs"] if e != first and study.deployments(e) == 5]


def novelty(study: Study, envs: list[str] | None = None) -> tuple[pd.DataFrame, list]:
    """Table 1 per run: B(i) against B(1..i-1), i >= 2, under both readings of the cosine score
    (NOVELTY_READINGS; algos/core/novelty.py), at 500k with the ablation seeds, on `envs`
    (default: the novelty env), from the saved batches, else from the run's novelty.csv (a
    novelty.csv written before the nearest-neighbour reading existed gives NaN there).
    Returns (rows name/env/seed/deployment/<readings>, runs with neither)."""
    rows, missing = [], []
    for env in envs or [study.cfg["novelty_env"]]:
        for key in [RunKey("runs", a, env, SECTION5_BUDGET, s) for a in study.algos for s in study.ablation_seeds]:
            obs = study.batch_obs(key)
            if obs is not None:
                saved = pd.DataFrame(metrics.novelty_rows(obs))
            elif study.exists(key) and (key.path(study.root) / "novelty.csv").is_file():
                saved = pd.read_csv(key.path(study.root) / "novelty.csv")  # the run's own (same functions)
            else:
                missing.append(key)
                continue
            for r in saved.itertuples(index=False):
                rows.append((key.name, env, key.seed, int(r.deployment),
                             *(float(getattr(r, c, np.nan)) for c in NOVELTY_READINGS)))
    return pd.DataFrame(rows, columns=["name", "env", "seed", "deployment", *NOVELTY_READINGS]), missing


def model_eval(study: Study) -> pd.DataFrame:
    """Fig. 6: energy distance and trajectory MSE per (algo, deployment) with CIs."""
    me = study.model_eval()
    if me.empty:
        return pd.DataFrame(columns=["metric", "name", "deployment"] + SUMMARY_COLUMNS)
    parts = []
    for metric in ("energy_distance", "trajectory_mse"):
        s = ci_over_seeds(me, ["name", "deployment"], metric)
        s.insert(0, "metric", metric)
        parts.append(s)
    return pd.concat(parts, ignore_index=True)



# ---- MUSBO's diagnostics (scalars.csv of each run, algos/core/scalars.py) ----

# (quantity, scalar names that may hold it (first found wins), how one deployment's rows reduce,
# the algorithms that record it): "last" = the value at the deployment's last step (the final
# policy's), "mean" = over its steps.
DIAGNOSTICS = (
    ("eq9_mean", ("eq9_mean",), "last", ("musbo",)),                # labels of the new batch (MUSBO.label_batch)
    ("eq9_share_at_0", ("eq9_share_at_0",), "last", ("musbo",)),
    ("eq12_mean", ("eq12_mean",), "mean", ("musbo",)),              # per TRPO iteration (train_in_model)
    # model_trpo.train_in_model: mean reward per imagined step x rollout length
    ("imagined_return", ("imagined_return", "mean_reward_x_horizon"), "last", ("musbo", "bremen")),
    ("live_imagined_samples", ("live_samples",), "mean", ("musbo", "bremen")),
)


def read_scalars(path) -> pd.DataFrame:
    """One run's scalars.csv (deployment, phase, step, name, value); empty if absent."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["deployment", "phase", "step", "name", "value"])


def reduce_scalars(s: pd.DataFrame) -> pd.DataFrame:
    """Per deployment, each DIAGNOSTICS quantity that the table holds: rows deployment/quantity/value."""
    rows = []
    for quantity, names, how, _ in DIAGNOSTICS:
        found = next((n for n in names if (s.name == n).any()), None)
        if found is None:
            continue
        for dep, sub in s[s.name == found].groupby("deployment"):
            value = sub.sort_values("step").value.iloc[-1] if how == "last" else sub.value.mean()
            rows.append((int(dep), quantity, float(value)))
    return pd.DataFrame(rows, columns=["deployment", "quantity", "value"])


def diagnostics(study: Study, budget: str = SECTION5_BUDGET) -> tuple[pd.DataFrame, dict]:
    """DIAGNOSTICS per main run at `budget` (rows name/env/seed/deployment/quantity/value) plus
    the real eval return as quantity `real_return`; and per quantity the runs (present, with a
    metrics.csv, of an algorithm that records it) whose scalars.csv lacks it (older runs)."""
    frames, lacking = [], {q: [] for q, _, _, _ in DIAGNOSTICS}
    recorded_by = {q: algos for q, _, _, algos in DIAGNOSTICS}
    for key in [k for k in study.main_keys() if k.budget == budget and study.exists(k)]:
        reduced = reduce_scalars(read_scalars(key.path(study.root) / "scalars.csv"))
        m = pd.read_csv(key.path(study.root) / "metrics.csv")
        real = pd.DataFrame({"deployment": m.deployment, "quantity": "real_return", "value": m.eval_return_mean})
        df = pd.concat([reduced, real], ignore_index=True)
        df.insert(0, "name", key.name)
        df.insert(1, "env", key.env)
        df.insert(2, "seed", key.seed)
        frames.append(df)
        for q in lacking:
            if key.name in recorded_by[q] and not (reduced.quantity == q).any():
                lacking[q].append(key)
    data = (pd.concat(frames, ignore_index=True) if frames else
            pd.DataFrame(columns=["name", "env", "seed", "deployment", "quantity", "value"]))
    return data, lacking


# ---- Theorem 1: monotone improvement across deployments ----

def monotone_share(study: Study) -> pd.DataFrame:
    """Per complete main run: the share of steps i -> i+1 (i = 1..I-1) at which the eval return
    does not drop (return(i+1) >= return(i)). Rows name/env/budget/seed/share/steps."""
    m = study.metrics
    m = m[m.kind == "runs"]
    rows = []
    for (name, env, budget, seed), sub in m.groupby(["name", "env", "budget", "seed"]):
        r = sub.sort_values("deployment").eval_return_mean.to_numpy()
        if len(r) < 2 or len(r) != study.deployments(env):
            continue
        rows.append((name, env, budget, int(seed), float(np.mean(np.diff(r) >= 0)), len(r) - 1))
    return pd.DataFrame(rows, columns=["name", "env", "budget", "seed", "share", "steps"])


# ---- Appendix F: time per run ----

PAPER_T4_HOURS = {"walker2d": 18.0, "hopper": 26.0, "halfcheetah": 7.0, "ant": 12.0, "cheetah-run": 8.0}  # 500k


def measured_run_hours(study: Study) -> pd.DataFrame:
    """Per (algo, env, budget): the mean over complete main runs of the summed phase times
    (the *_s columns of metrics.csv: collection, models, BC, policy, eval), in hours."""
    m = study.metrics
    m = m[m.kind == "runs"]
    cols = [c for c in m.columns if c.endswith("_s")]
    if m.empty or not cols:
        return pd.DataFrame(columns=["name", "env", "budget", "hours", "runs"])
    per_run = m.groupby(["name", "env", "budget", "seed"])[cols].sum().sum(axis=1).rename("seconds").reset_index()
    out = per_run.groupby(["name", "env", "budget"]).seconds.agg(["mean", "count"]).reset_index()
    return pd.DataFrame({"name": out.name, "env": out.env, "budget": out.budget, "hours": out["mean"] / 3600,
                         "runs": out["count"]})
