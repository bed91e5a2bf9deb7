"""Did each algorithm learn? (docs/paper_to_code.md, "Did each algorithm learn?"). A verdict
compares algorithms; this says, per algorithm, env and budget of the main grid, whether the
final-deployment eval return (95 % CI over seeds) lies above deployment 1's CI and above the
better of two trivial policies: uniform random actions and standing still (action 0)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import standing_still, summaries
from analysis.figures import env_label, label
from analysis.metrics import Interval
from analysis.output import fmt_interval, markdown_table
from analysis.profile import env_run_config
from analysis.results import Study

LEARNED = "learned"
IMPROVED_ONLY = "improved, not past a trivial policy"
TRIVIAL_ONLY = "past a trivial policy from deployment 1 on"
DID_NOT_LEARN = "did not learn"
NO_CALL = "no call (fewer than 2 seeds)"


def reading(final: Interval, first: Interval, trivial: float) -> str:
    """The row's reading from the final CI, deployment 1's CI and the better trivial policy's
    return; "above" = the whole CI lies above (the verdicts' non-overlap rule)."""
    if not all(np.isfinite(v) for v in (*final, *first)):
        return NO_CALL
    above_first, above_trivial = final.low > first.high, final.low > trivial
    if above_first and above_trivial:
        return LEARNED
    if above_first:
        return IMPROVED_ONLY
    if above_trivial:
        return TRIVIAL_ONLY
    return DID_NOT_LEARN


def table(study: Study, returns: pd.DataFrame) -> pd.DataFrame:
    """One row per (env, budget, algorithm) with a complete run. `returns`: eval-return CIs over
    seeds, as summaries.ci_over_seeds (columns name, env, budget, deployment, mean, low, high, n)."""
    random = summaries.random_reference(study)
    rows = []
    for env in study.cfg["envs"]:
        last = study.deployments(env)
        still = None  # run the env only where some algorithm has a final return
        for budget in study.cfg["budgets"]:
            for algo in study.algos:
                final, n = summaries.ci_at(returns, name=algo, env=env, budget=budget, deployment=last)
                if n is None:
                    continue
                if still is None:
                    still = standing_still.reference(env, study.seeds, env_run_config(study.cfg, env)["eval_episodes"])
                first, _ = summaries.ci_at(returns, name=algo, env=env, budget=budget, deployment=1)
                rnd = float(random.get(env, np.nan))
                rows.append({"env": env, "budget": budget, "name": algo, "seeds": n,
                             "random": rnd, "still": still, "trivial": np.nanmax([rnd, still]),
                             "first": first, "final": final,
                             "reading": reading(final, first, np.nanmax([rnd, still]))})
    return pd.DataFrame(rows)


def section(study: Study) -> list[str]:
    """claims.md's section: `table` of the main grid, with the rule."""
    lines = ["", "## Did each algorithm learn?", "",
             "Main grid, complete runs: final-deployment eval return [95 % CI over seeds] against deployment 1's "
             "CI (the policy trained on the random batch) and against the better of two trivial policies, uniform "
             "random actions (deployment 0 of eval_returns.csv) and standing still (action 0 at every step). "
             f"**{LEARNED}**: above both; **{IMPROVED_ONLY}**; **{TRIVIAL_ONLY}**; **{DID_NOT_LEARN}**: above "
             "neither. Above = the whole CI lies above (analysis/learned.py; rule in docs/paper_to_code.md). "
             "This describes the runs; it changes no verdict.", ""]
    df = table(study, summaries.main_return_cis(study))
    if df.empty:
        return lines + ["No complete run.", ""]
    # one decimal where an env's returns are small (Cheetah-Run at these sizes), else none
    digits = df.env.map(df.groupby("env").final.apply(lambda f: 1 if max(abs(x.point) for x in f) < 100 else 0))
    shown = pd.DataFrame({"Env": df.env.map(env_label), "Budget": df.budget, "Algorithm": df.name.map(label),
                          "Seeds": df.seeds,
                          "Random policy": [f"{v:.{d}f}" for v, d in zip(df.random, digits)],
                          "Standing still": [f"{v:.{d}f}" for v, d in zip(df.still, digits)],
                          "Deployment 1": [fmt_interval(ci, d) for ci, d in zip(df["first"], digits)],
                          "Final": [fmt_interval(ci, d) for ci, d in zip(df.final, digits)],
                          "Reading": df.reading})
    counts = df.reading.value_counts()
    summary = "Summary of the learning check: " + ", ".join(
        f"{counts[k]} {k}" for k in (LEARNED, IMPROVED_ONLY, TRIVIAL_ONLY, DID_NOT_LEARN, NO_CALL) if k in counts)
    return lines + [markdown_table(shown), "", summary, ""]
