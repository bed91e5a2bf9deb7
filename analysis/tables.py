"""Table 1 (novelty of each batch, from the saved batches) and Table 2 (hyperparameters,
generated from the config: never typed by hand), each as CSV, Markdown and LaTeX, beside
the paper's own values."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import summaries
from analysis.figures import env_label, label
from analysis.metrics import Interval
from analysis.output import fmt_interval, write_table
from analysis.profile import env_run_config
from analysis.results import SECTION5_BUDGET, Study

# file names (without extension) in paper_figures/, as the workflow declares them
TABLE1, TABLE2, TABLE2_PROFILE = "table1_novelty", "table2_hyperparameters", "table2_hyperparameters_profile"

# ---- Table 1 ----

# The paper's Table 1 (cosine similarity, deployments 2-5).
PAPER_TABLE1 = {"musbo": {2: 0.994, 3: 0.963, 4: 0.945, 5: 0.944},
                "bremen": {2: 0.974, 3: 0.909, 4: 0.894, 5: 0.865}}


def _closeness(summ: pd.DataFrame) -> pd.DataFrame:
    """Per (reading, env): the mean |ours - paper| over the paper's cells (MUSBO and BREMEN,
    deployments 2-5) that we have, and how many cells that is."""
    rows = []
    for (reading, env), sub in summ.groupby(["reading", "env"], sort=False):
        gaps = [abs(r["mean"] - PAPER_TABLE1[r["name"]][r["deployment"]]) for _, r in sub.iterrows()
                if r["name"] in PAPER_TABLE1 and r["deployment"] in PAPER_TABLE1[r["name"]] and np.isfinite(r["mean"])]
        rows.append((reading, env, float(np.mean(gaps)) if gaps else np.nan, len(gaps)))
    return pd.DataFrame(rows, columns=["reading", "env", "mean_abs_gap_to_paper", "cells"])


def table1(study: Study, out: Path) -> list[Path]:
    """Table 1 under both readings of the paper's "cosine score" (summaries.NOVELTY_READINGS),
    for every env with 5 deployments, beside the paper's values, and which reading and env
    come closest to them."""
    envs = summaries.novelty_envs(study)
    rows, no_batches = summaries.novelty(study, envs)
    parts = []
    for reading in summaries.NOVELTY_READINGS:
        part = summaries.ci_over_seeds(rows, ["env", "name", "deployment"], reading)
        part.insert(0, "reading", reading)
        parts.append(part)
    summ = pd.concat(parts, ignore_index=True)
    csv, shown = [], []
    for env in envs:
        for dep in range(2, study.deployments(env) + 1):
            c, s = {"env": env, "deployment": dep}, {"Env": env_label(env), "Deployment": dep}
            for algo in study.algos:
                paper = PAPER_TABLE1.get(algo, {}).get(dep, np.nan)
                for reading, title in summaries.NOVELTY_READINGS.items():
                    r = summ[(summ.reading == reading) & (summ.env == env) & (summ.name == algo) & (summ.deployment == dep)]
                    mean, low, high, n = (r.iloc[0][["mean", "low", "high", "n"]] if len(r) else (np.nan, np.nan, np.nan, 0))
                    short = "nn" if reading.startswith("nn") else "all_pairs"
                    c.update({f"{algo}_{short}_mean": mean, f"{algo}_{short}_ci_low": low,
                              f"{algo}_{short}_ci_high": high, f"{algo}_{short}_n_seeds": int(n)})
                    s[f"{label(algo)} ({title})"] = fmt_interval(Interval(mean, low, high), 3)
                c[f"{algo}_paper"] = paper
                if algo in PAPER_TABLE1:
                    s[f"{label(algo)} (paper)"] = f"{paper:.3f}" if np.isfinite(paper) else "-"
            csv.append(c)
            shown.append(s)
    close = _closeness(summ)
    known = close.dropna(subset=["mean_abs_gap_to_paper"])
    if len(known):
        best = known.loc[known.mean_abs_gap_to_paper.idxmin()]
        closest = (f"**Closest to the paper's values** (of the readings and envs with values): the "
                   f"{summaries.NOVELTY_READINGS[best.reading]} reading on "
                   f"{env_label(best.env)} (mean |ours − paper| {best.mean_abs_gap_to_paper:.3f} over "
                   f"{int(best.cells)} cells of MUSBO and BREMEN, deployments 2-5). Per reading and env: "
                   + "; ".join(f"{summaries.NOVELTY_READINGS[r.reading]} / {env_label(r.env)} "
                               f"{r.mean_abs_gap_to_paper:.3f}" for r in known.itertuples()) + ".")
    else:
        closest = "**Closest to the paper's values:** not known (no run gives either reading)."
    absent = [f"{summaries.NOVELTY_READINGS[r.reading]} / {env_label(r.env)}"
              for r in close.itertuples() if not np.isfinite(r.mean_abs_gap_to_paper)]
    if absent:
        closest += (" No value for " + ", ".join(absent) + " (a novelty.csv written before the "
                    "nearest-neighbour reading existed, and no saved batches: re-run to fill it).")
    seeds = ", ".join(map(str, study.ablation_seeds))
    what = (f"Envs with 5 deployments ({', '.join(env_label(e) for e in envs)}), I × B = {SECTION5_BUDGET}, "
            f"profile `{study.profile}`, seeds {seeds}: mean over seeds and 95 % bootstrap CI")
    missing = ("" if not no_batches else
               f"\n**Missing batches** (these runs have neither readable batches nor novelty.csv and are left out; "
               f"see missing_runs.md): " + ", ".join(f"`{k}`" for k in no_batches) + "\n")
    if study.unreadable_batches:
        missing += ("\n**Unreadable batches** (skipped; the run's novelty.csv stands in where present): "
                    + "; ".join(f"`{k}`: {why}" for k, why in sorted(study.unreadable_batches.items())) + "\n")
    notes = (f"The paper's \"cosine score\" of B(i) against B(1..i-1), two readings "
             f"(algos/core/novelty.py): *mean over all pairs* = the cosine of each state of B(i) with every "
             f"state of B(1..i-1), averaged over all pairs (exact: the dot product of the mean unit vectors); "
             f"*nearest neighbour* = for each state of B(i) its highest cosine to any earlier state, averaged "
             f"over B(i) (exact search, blocked matrix products). The paper does not name its env; its values "
             f"are repeated beside every env. {what}.\n\n{closest}\n\n"
             f"**Higher similarity means LESS novelty.** In the paper's own Table 1, MUSBO's batches are "
             f"MORE similar to the earlier data than BREMEN's at every deployment (e.g. 0.994 vs 0.974 at "
             f"deployment 2), i.e. less novel, which contradicts the paper's claim that MUSBO finds more "
             f"novel data. See claims.md for the verdict on our runs.\n"
             + ("" if study.profile == "paper" else
                f"\nProfile `{study.profile}` uses reduced sizes: these are NOT the paper's numbers.\n") + missing)
    caption = (f"Cosine similarity of B(i) with B(1..i-1), mean over all pairs and nearest neighbour, on the "
               f"envs with 5 deployments ({SECTION5_BUDGET}, profile {study.profile}, seeds {seeds}; "
               f"mean [95\\% CI]). Higher similarity = less novelty.")
    return write_table(out, TABLE1, pd.DataFrame(csv), pd.DataFrame(shown), "Table 1: novelty of each batch",
                       notes, caption)


# ---- Table 2 ----

# (label, LaTeX label, config key under run.defaults / run.envs.ENV); "B@500k" etc. are derived.
TABLE2_ROWS = [
    ("Deployments I", r"Deployments $I$", "deployments"),
    ("Batch B at 500k (= budget / I)", r"Batch $B$ at 500k", "B@500k"),
    ("Batch B at 250k (= budget / I)", r"Batch $B$ at 250k", "B@250k"),
    ("L (TRPO iterations)", r"$L$ (TRPO iterations)", "trpo.iterations"),
    ("Rollout length", "Rollout length", "trpo.rollout_length"),
    ("TRPO δ", r"TRPO $\delta$", "trpo.delta"),
    ("γ", r"$\gamma$", "gamma"),
    ("GAE λ", r"GAE $\lambda$", "trpo.gae_lambda"),
    ("α (eq. 12)", r"$\alpha$ (eq.~12)", "musbo.alpha"),
    ("σ_c (eq. 22)", r"$\sigma_c$ (eq.~22)", "musbo.exploration_const_std"),
    ("Imagined transitions / TRPO iteration", "Imagined transitions / iteration", "trpo.transitions_per_iteration"),
    ("Dynamics ensemble N", r"Dynamics ensemble $N$", "dynamics.members"),
    ("Dynamics hidden", "Dynamics hidden", "dynamics.hidden"),
    ("Dynamics lr", "Dynamics lr", "dynamics.lr"),
    ("Dynamics batch", "Dynamics batch", "dynamics.batch_size"),
    ("Labeler ensemble K", r"Labeler ensemble $K$", "labeler.members"),
    ("Labeler hidden", "Labeler hidden", "labeler.hidden"),
    ("Labeler lr", "Labeler lr", "labeler.lr"),
    ("Policy hidden", "Policy hidden", "policy.hidden"),
    ("BC lr", "BC lr", "bc.lr"),
    ("Validation split", "Validation split", "dynamics.holdout"),
    ("Early-stopping patience (epochs)", "Early-stopping patience", "dynamics.patience"),
    ("BREMEN exploration std", "BREMEN exploration std", "bremen.exploration_std"),
    ("MOPO horizon h", r"MOPO horizon $h$", "mopo.horizon"),
    ("MOPO penalty λ", r"MOPO penalty $\lambda$", "mopo.penalty_lambda"),
    ("MOPO SAC steps / deployment", "MOPO SAC steps / deployment", "mopo.sac_steps"),
]

# The paper's values: Table 2 (L, rollout length, δ per env) and section 4 / appendix F
# (the same for all envs unless listed per env).
_PAPER_COMMON = {"gamma": 0.99, "trpo.gae_lambda": 0.95, "musbo.alpha": 0.028, "musbo.exploration_const_std": 0.01,
                 "dynamics.members": 5, "dynamics.hidden": [1024, 1024], "dynamics.lr": 1e-3,
                 "labeler.members": 3, "labeler.hidden": [1024, 1024], "labeler.lr": 1e-3,
                 "policy.hidden": [200, 200], "bc.lr": 5e-4, "dynamics.holdout": 0.15, "dynamics.patience": 3}
_PAPER_PER_ENV = {
    "ant": {"trpo.iterations": 2000, "trpo.rollout_length": 250, "trpo.delta": 0.05, "trpo.gae_lambda": 0.97,
            "deployments": 5, "B@500k": 100_000, "B@250k": 50_000},
    "halfcheetah": {"trpo.iterations": 2000, "trpo.rollout_length": 250, "trpo.delta": 0.1,
                    "deployments": 5, "B@500k": 100_000, "B@250k": 50_000},
    "hopper": {"trpo.iterations": 6000, "trpo.rollout_length": 1000, "trpo.delta": 0.05,
               "deployments": 10, "B@500k": 50_000, "B@250k": 25_000},
    "walker2d": {"trpo.iterations": 2000, "trpo.rollout_length": 1000, "trpo.delta": 0.05,
                 "deployments": 10, "B@500k": 50_000, "B@250k": 25_000},
    "cheetah-run": {"trpo.iterations": 2000, "trpo.rollout_length": 250, "trpo.delta": 0.05,
                    "deployments": 5, "B@500k": 100_000, "B@250k": 50_000},
}


def paper_value(env: str, key: str):
    return _PAPER_PER_ENV.get(env, {}).get(key, _PAPER_COMMON.get(key))


def config_value(run_cfg: dict, key: str):
    if key.startswith("B@"):
        return int(run_cfg["budget_samples"][key[2:]]) // int(run_cfg["deployments"])
    value = run_cfg
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return " × ".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def _raw(v):
    """A CSV cell: the value itself; a list as JSON."""
    return json.dumps(v) if isinstance(v, list) else v


def _same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a is not None and b is not None and np.isclose(float(a), float(b))


def hyperparameter_table(cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(csv, markdown, latex) frames: one row per hyperparameter with the config's value per
    env, followed, where the paper states the value, by a row with the paper's values and a
    `matches paper` column."""
    envs = list(cfg["envs"])
    run_cfgs = {e: env_run_config(cfg, e) for e in envs}
    csv, shown, tex = [], [], []
    for name, tex_name, key in TABLE2_ROWS:
        ours = {e: config_value(run_cfgs[e], key) for e in envs}
        paper = {e: paper_value(e, key) for e in envs}
        stated = any(v is not None for v in paper.values())
        match = all(_same(ours[e], paper[e]) for e in envs if paper[e] is not None) if stated else None
        match_txt = "" if match is None else ("yes" if match else "NO")
        csv.append({"hyperparameter": name, "config_key": key, "source": f"config ({cfg.get('profile')})",
                    **{e: _raw(ours[e]) for e in envs}, "matches_paper": match_txt})
        shown.append({"Hyperparameter": name, "Config key": key, **{env_label(e): _fmt(ours[e]) for e in envs},
                      "Matches paper": match_txt})
        tex.append({"Hyperparameter": tex_name, **{env_label(e): _fmt(ours[e]) for e in envs},
                    "Matches paper": match_txt})
        if stated:
            csv.append({"hyperparameter": name, "config_key": key, "source": "paper",
                        **{e: _raw(paper[e]) for e in envs}, "matches_paper": ""})
            shown.append({"Hyperparameter": "↳ paper", "Config key": "",
                          **{env_label(e): _fmt(paper[e]) for e in envs}, "Matches paper": ""})
            tex.append({"Hyperparameter": r"\quad paper", **{env_label(e): _fmt(paper[e]) for e in envs},
                        "Matches paper": ""})
    return pd.DataFrame(csv), pd.DataFrame(shown), pd.DataFrame(tex)


def _table2_files(cfg: dict, out: Path, name: str, title: str, note: str) -> list[Path]:
    csv, shown, tex = hyperparameter_table(cfg)
    notes = (f"{note}\n\nGenerated from the config's `run:` section (`run.defaults` with `run.envs.ENV` merged "
             f"in); the rows `↳ paper` hold the values stated in the paper (Table 2: L, rollout length, δ; "
             f"section 4 and appendix F: the rest), `-` where the paper states none.\n")
    caption = f"{title.split(': ', 1)[-1].capitalize()}. Rows ``paper'' give the paper's stated values."
    return write_table(out, name, csv, shown, title, notes, caption, shown_tex=tex, raw_columns=("Hyperparameter",))


def table2(cfg_paper: dict, cfg_profile: dict, out: Path) -> list[Path]:
    """TABLE2.*: config/paper.yaml against the paper; TABLE2_PROFILE.*: what the profile's
    runs used (the same values when the profile is `paper`)."""
    profile = cfg_profile.get("profile", "?")
    paths = _table2_files(cfg_paper, out, TABLE2, "Table 2: hyperparameters per env (config/paper.yaml)",
                          "The paper profile: every number should match the paper (`Matches paper` = yes).")
    note = ("" if profile == "paper" else
            f"Profile `{profile}` shrinks sizes on purpose, so some rows do not match the paper: "
            f"its results are NOT the paper's numbers.")
    return paths + _table2_files(cfg_profile, out, TABLE2_PROFILE,
                                 f"Table 2 for profile {profile}: hyperparameters the runs used", note)
