"""Numbers derived from the runs, shared by figures, tables and claims: means with CIs over
seeds, final returns, normalised scores and their aggregates, novelty per deployment."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.results import Study

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
    CIs (runs resampled within each env)."""
    scores = normalised_final_returns(study)
    rows = []
    for budget in study.cfg["budgets"]:
        b = scores[(scores.budget == budget) & scores.score.notna()]
        envs = [e for e in study.cfg["envs"] if e in set(b.env)]
        for algo in study.algos:
            a = b[b.name == algo]
            ci = metrics.stratified_iqm_ci(_per_env(a, envs, "score"))
            rows.append(("iqm", budget, algo, *ci, a.env.nunique(), len(a)))
        f = scores[scores.budget == budget]
        envs_f = [e for e in study.cfg["envs"] if e in set(f.env)]
        for base in [a for a in study.algos if a != "musbo"]:
            x, y = f[f.name == "musbo"], f[f.name == base]
            ci = metrics.probability_of_improvement(_per_env(x, envs_f, "final_return"),
                                                    _per_env(y, envs_f, "final_return"))
            n_envs = len(set(x.env) & set(y.env))
            rows.append(("poi", budget, f"musbo>{base}", *ci, n_envs, len(x) + len(y)))
    return pd.DataFrame(rows, columns=["measure", "budget", "name", "point", "low", "high", "n_envs", "n_runs"])


def novelty(study: Study) -> tuple[pd.DataFrame, list]:
    """Table 1 per run: cosine similarity of B(i) with B(1..i-1), i >= 2, on the novelty
    env at 500k, from the saved batches, else from the run's novelty.csv. Returns (rows
    name/seed/deployment/cosine_similarity, runs with neither)."""
    rows, missing = [], []
    for key in study.novelty_keys():
        obs = study.batch_obs(key)
        if obs is not None:
            sims = enumerate(metrics.cosine_novelty_per_deployment(obs), start=2)
        elif study.exists(key) and (key.path(study.root) / "novelty.csv").is_file():
            # the run's own novelty.csv (same function): batches are not committed
            saved = pd.read_csv(key.path(study.root) / "novelty.csv")
            sims = zip(saved.deployment, saved.cosine_similarity)
        else:
            missing.append(key)
            continue
        rows += [(key.name, key.seed, int(i), float(sim)) for i, sim in sims]
    return pd.DataFrame(rows, columns=["name", "seed", "deployment", "cosine_similarity"]), missing


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

