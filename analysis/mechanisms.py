"""Mechanism activity: did the mechanisms the claims rely on act in the runs? Read from each
complete main-grid run's scalars.csv (algos/core/scalars.py) and config.yaml; each run is reduced
to one number per quantity, then one row per algorithm x env x budget holds the mean over its
seeds. A share averaged over batches or TRPO iterations of equal size is the share of all their
labels pooled.

  eq. 9 (MUSBO, labels/eq9_*): mean, p10, share within 0.01 of 0 and of 1 of the labels of
      B(2..I) (B(1) is labelled 1 without a labeler), averaged over deployments;
  eq. 12 (MUSBO, policy/eq12_*): the same at TRPO's imagined samples, averaged over iterations;
  eq. 22 (MUSBO, exploration/eq22_*): the exploration noise std and the share of action
      entries outside [-1, 1] (clipped by the env);
  eq. 11 (MUSBO, BREMEN, bc/*): the final bc_loss of each deployment i >= 2 over
      bc/random_action_loss, the loss of the best fit to uniform-random actions on the same data
      (algos/core/bc.py: random_action_loss); deployment 1 clones the random batch B(1) and sits
      at that level by construction. Runs made before the reference was recorded get it from the
      same function: the env's act_dim, weights 1 (BREMEN) or, under MUSBO's weighting, the mean
      eq. 9 label of B(1..i) (B(1): 1). Beside it, where the run records eq. 22's noise std, the
      ratio a PERFECT clone of the collecting policy would reach on that noisy batch
      (`perfect_clone_over_random`): at eq. 22's std of about 0.9 it is about 1.4, so the ratio
      cannot tell a clone that carries the policy over from one that carries nothing;
  model exploitation (MUSBO, BREMEN): the imagined return of the last TRPO iteration
      (policy/mean_reward_x_horizon, over TRPO's rollout length) beside the real eval return
      (a whole episode), at the last deployment;
  TRPO (MUSBO, BREMEN): the policy std after BC (policy_std at iteration 0) beside the sampling
      std (trpo.sample_std when trpo.sample_noise is fixed), the mean KL over trpo.delta and the
      mean step fraction (1 with KL ~ delta: the trust region bounds the step; below 1: the line
      search cut it);
  padding (policy/padding_share, when recorded): the share of padding rows of BREMEN-assembled
      batches;
  MOPO (mopo_rollout/*): lambda x the mean penalty beside the mean model reward before the penalty.

A mechanism is *inactive* by docs/paper_to_code.md's degeneracy rule ("Readings of eqs. 9, 12
and 22"), with the thresholds below (also bench/label_readings.py's): eqs. 9, 12: more than
DEGENERATE_SHARE of the labels within LABEL_TOL of 0, or of 1 (the weights are then about the
same for almost every sample); eq. 22: more than CLIPPED_SHARE of the action entries clipped;
eq. 11: a final BC loss of at least BC_RANDOM_LEVEL times the random-action loss (the initial
policy carries almost nothing over from the data), judged only where a perfect clone would sit
below that level (not judged where the batch's exploration noise alone puts it there). Runs made
before eq. 12's shares were recorded
are judged by its quantiles: mean p10 >= 1 - LABEL_TOL (about 90 % or more within LABEL_TOL of 1),
or mean p90 <= LABEL_TOL."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from algos.config import read_config_file
from algos.core.bc import random_action_loss
from analysis.figures import env_label, label
from analysis.output import markdown_table
from analysis.results import Study
from analysis.summaries import read_scalars
from envs import get_spec

LABEL_TOL = 0.01         # "within 0.01 of 0 or 1": the bounds of Scalars.distribution
DEGENERATE_SHARE = 0.9   # eqs. 9, 12: more than this share of the labels at one bound
CLIPPED_SHARE = 0.25     # eq. 22: more than this share of the action entries clipped
BC_RANDOM_LEVEL = 0.9    # eq. 11: final BC loss / random-action loss at or above this

VALUES = ["eq9_mean", "eq9_p10", "eq9_share_at_0", "eq9_share_at_1",
          "eq12_mean", "eq12_p10", "eq12_p90", "eq12_share_at_0", "eq12_share_at_1",
          "eq22_noise_std", "eq22_clipped_share",
          "bc_loss", "bc_random_action_loss", "bc_loss_over_random", "bc_perfect_clone_over_random",
          "imagined_return", "real_return", "policy_std_after_bc", "sample_std", "kl_over_delta",
          "step_fraction", "padding_share", "mopo_penalty", "mopo_model_reward"]
KEYS = ["algo", "env", "budget"]
COLUMNS = KEYS + ["seeds"] + VALUES + ["bc_reference", "inactive"]

# mechanism -> (what the note calls it, what a verdict then does not test)
MECHANISMS = {
    "eq9": ("eq. 11 weighting inactive", "the uncertainty weighting of behaviour cloning (eqs. 9, 11)"),
    "eq12": ("eq. 13 weighting inactive", "the uncertainty weighting of TRPO (eqs. 12, 13)"),
    "eq22": ("eq. 22 exploration degenerate", "uncertainty-guided exploration (eq. 22)"),
    "bc": ("initial policy at the random-action level", "what behaviour cloning carries over (eq. 11)"),
}


def _values(s: pd.DataFrame, phase: str, name: str) -> pd.Series:
    return s.loc[(s.phase == phase) & (s.name == name), "value"]


def _per_deployment(s: pd.DataFrame, phase: str, name: str, first: bool = False) -> pd.Series:
    """The value at the last (or first) step of each deployment, indexed by deployment."""
    rows = s[(s.phase == phase) & (s.name == name)].sort_values(["deployment", "step"], kind="stable")
    by = rows.groupby("deployment").value
    return by.first() if first else by.last()


def _derived_reference(s: pd.DataFrame, cfg: dict, algo: str, env: str, deployments) -> pd.Series:
    """bc/random_action_loss for runs made before it was recorded (see the module docstring)."""
    p = cfg.get("policy", {})
    min_std = float(np.exp(p["min_log_std"])) if p.get("log_std") == "state_dependent" else 0.0
    weighted = algo == "musbo" and cfg.get("musbo", {}).get("uncertainty_weighting", True)
    labels = _per_deployment(s, "labels", "eq9_mean")
    mean_weight = {d: np.mean([1.0] + [labels.get(j, np.nan) for j in range(2, d + 1)]) if weighted else 1.0
                   for d in deployments}
    return pd.Series({d: random_action_loss(get_spec(env).act_dim, w, min_std) for d, w in mean_weight.items()})


def perfect_clone_over_random(noise_std: float) -> float:
    """Eq. 11's loss of a perfect clone of the policy that collected the batch, over the
    random-action loss (`random_action_loss`, tanh mean), when each action entry carries Gaussian
    exploration noise of std `noise_std` and the env clips it to [-1, 1]: E[min(eps^2, 1)] / (1/3)
    for eps ~ N(0, noise_std^2), i.e. at a policy mean of 0, where clipping removes the least
    noise. Per entry, with z = 1 / noise_std:
        E[eps^2; |eps| < 1] = noise_std^2 ((2 Phi(z) - 1) - 2 z phi(z)),  P(|eps| >= 1) = 2 (1 - Phi(z))."""
    if not noise_std > 0:
        return 0.0 if noise_std == 0 else math.nan
    z = 1.0 / noise_std
    cdf = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return 3.0 * (noise_std ** 2 * ((2.0 * cdf - 1.0) - 2.0 * z * pdf) + 2.0 * (1.0 - cdf))


def _bc(s: pd.DataFrame, cfg: dict, algo: str, env: str) -> dict:
    loss = _per_deployment(s, "bc", "bc_loss")
    loss = loss[loss.index >= 2]
    if loss.empty:
        return {"bc_reference": ""}
    reference, source = _per_deployment(s, "bc", "random_action_loss").reindex(loss.index), "recorded"
    if reference.isna().any():
        reference, source = _derived_reference(s, cfg, algo, env, loss.index), "derived"
    return {"bc_loss": loss.mean(), "bc_random_action_loss": reference.mean(),
            "bc_loss_over_random": (loss / reference).mean(), "bc_reference": source}


def run_row(s: pd.DataFrame, metrics: pd.DataFrame, cfg: dict, algo: str, env: str) -> dict:
    """One run's quantities (VALUES; NaN where the run did not record them) from its scalars.csv
    table `s`, its metrics.csv and its config.yaml."""
    t = cfg.get("trpo", {})
    kl = _values(s, "policy", "kl")
    last = int(metrics.deployment.max())
    row = {f"{eq}_{q}": _values(s, phase, f"{eq}_{q}").mean()
           for eq, phase, quantities in (("eq9", "labels", ("mean", "p10", "share_at_0", "share_at_1")),
                                         ("eq12", "policy", ("mean", "p10", "p90", "share_at_0", "share_at_1")))
           for q in quantities}
    row.update({
        "eq22_noise_std": _values(s, "exploration", "eq22_noise_std_mean").mean(),
        "eq22_clipped_share": _values(s, "exploration", "eq22_clipped_share").mean(),
        "imagined_return": _per_deployment(s, "policy", "mean_reward_x_horizon").get(last, np.nan),
        "real_return": float(metrics.loc[metrics.deployment == last, "eval_return_mean"].iloc[0]),
        "policy_std_after_bc": _per_deployment(s, "policy", "policy_std", first=True).mean(),
        "sample_std": float(t["sample_std"]) if len(kl) and t.get("sample_noise") == "fixed" else np.nan,
        "kl_over_delta": kl.mean() / float(t["delta"]) if len(kl) else np.nan,
        "step_fraction": _values(s, "policy", "step_fraction").mean(),
        "padding_share": _values(s, "policy", "padding_share").mean(),
        "mopo_penalty": _values(s, "mopo_rollout", "penalty_mean").mean()
        * float(cfg.get("mopo", {}).get("penalty_lambda", np.nan)),
        "mopo_model_reward": _values(s, "mopo_rollout", "model_reward_mean").mean(),
        **_bc(s, cfg, algo, env)})
    row["bc_perfect_clone_over_random"] = perfect_clone_over_random(row["eq22_noise_std"])
    return {**dict.fromkeys(VALUES, np.nan), **row}


def inactive(row: dict) -> list[tuple[str, str, str]]:
    """(mechanism, value, what the value is) for each mechanism of one table row that was inactive."""
    out = []
    for eq, labels in (("eq9", "eq. 9 labels"), ("eq12", "imagined (eq. 12) labels")):
        for bound in (0, 1):
            share = row[f"{eq}_share_at_{bound}"]
            if share > DEGENERATE_SHARE:
                out.append((eq, pct(share), f"of the {labels} within {LABEL_TOL:g} of {bound}"))
    for bound, q, degenerate in ((1, "p10", row["eq12_p10"] >= 1 - LABEL_TOL), (0, "p90", row["eq12_p90"] <= LABEL_TOL)):
        if np.isnan(row[f"eq12_share_at_{bound}"]) and degenerate:
            out.append(("eq12", f"{row[f'eq12_{q}']:.3f}", f"= mean {q} of the imagined (eq. 12) labels: about 90 % or "
                        f"more of them within {LABEL_TOL:g} of {bound} (shares not recorded by these runs)"))
    if row["eq22_clipped_share"] > CLIPPED_SHARE:
        out.append(("eq22", pct(row["eq22_clipped_share"]), f"of the action entries clipped (> {pct(CLIPPED_SHARE)})"))
    if row["bc_loss_over_random"] >= BC_RANDOM_LEVEL and not bc_unjudged(row):
        out.append(("bc", f"{row['bc_loss_over_random']:.2f}", "= final BC loss / that of cloning uniform-random actions "
                    f"(≥ {BC_RANDOM_LEVEL:g})"))
    return out


def bc_unjudged(row: dict) -> bool:
    """Eq. 11's check cannot judge this row: the batches' exploration noise alone puts a perfect
    clone at BC_RANDOM_LEVEL or above."""
    return row["bc_perfect_clone_over_random"] >= BC_RANDOM_LEVEL


def table(study: Study) -> pd.DataFrame:
    """COLUMNS per algorithm x env x budget with at least one complete run with a scalars.csv."""
    rows = []
    for key in [k for k in study.main_keys() if study.exists(k)]:
        d = key.path(study.root)
        if not (d / "scalars.csv").is_file():
            continue
        cfg = read_config_file(d / "config.yaml")
        values = run_row(read_scalars(d / "scalars.csv"), pd.read_csv(d / "metrics.csv"), cfg, key.name, key.env)
        rows.append({"algo": key.name, "env": key.env, "budget": key.budget, "seed": key.seed, **values})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    per_run = pd.DataFrame(rows).reindex(columns=KEYS + ["seed", "bc_reference"] + VALUES)
    groups = per_run.groupby(KEYS, sort=False)
    out = groups[VALUES].mean()  # NaN (not recorded) skipped
    out["seeds"] = groups.seed.count()
    out["bc_reference"] = groups.bc_reference.agg(lambda x: "/".join(sorted(set(x.dropna()) - {""})))
    out = out.reset_index()
    out["inactive"] = [", ".join(dict.fromkeys(k for k, _, _ in inactive(r))) for r in out.to_dict("records")]
    return out[COLUMNS]


def notes(mech: pd.DataFrame, scopes) -> list[str]:
    """One note per mechanism inactive in the rows of `mech` at any (env, budget) of `scopes`:
    its value in each such row, then what the value is."""
    found: dict[tuple[str, str], list[str]] = {}
    for r in mech.to_dict("records"):
        if (r["env"], r["budget"]) in set(scopes):
            for key, value, what in inactive(r):
                found.setdefault((key, what), []).append(f"{value} ({label(r['algo'])} {env_label(r['env'])} {r['budget']})")
    return [f"{MECHANISMS[key][0]}: {', '.join(values)} {what}; this verdict does not test {MECHANISMS[key][1]}"
            for k in MECHANISMS for (key, what), values in found.items() if key == k]


def pct(x) -> str:
    return "n/a" if pd.isna(x) else f"{100 * x:.0f} %"


def num(x) -> str:
    return "n/a" if pd.isna(x) else f"{x:.3g}"


def _inactive_titles(row: dict, keys) -> str:
    return "; ".join(MECHANISMS[k][0] for k in dict.fromkeys(k for k, _, _ in inactive(row)) if k in keys) or "-"


def section(mech: pd.DataFrame) -> list[str]:
    """claims.md's "Mechanism activity": three tables (MUSBO's labels and exploration; BC and TRPO;
    MOPO's penalty) from `table`."""
    lines = ["", "## Mechanism activity", "",
             "From each main run's scalars.csv: per algorithm, env and budget, the mean over the seeds shown "
             "(analysis/mechanisms.py says how each number is reduced; all of them in mechanisms.csv). "
             f"**Inactive** (docs/paper_to_code.md, \"Readings\"): more than {pct(DEGENERATE_SHARE)} of the eq. 9 "
             f"or eq. 12 labels within {LABEL_TOL:g} of 0 or of 1; more than {pct(CLIPPED_SHARE)} of eq. 22's "
             f"action entries clipped; a final BC loss (deployments ≥ 2) of at least {BC_RANDOM_LEVEL:g} × the "
             "loss of cloning uniform-random actions on the same data, judged only where a perfect clone of the "
             "collecting policy would sit below that level given eq. 22's recorded noise std (\"not judged\" "
             "otherwise: the ratio then cannot tell a clone that carries the policy over from one that carries "
             "nothing). The claims above carry a note where a "
             "mechanism they rely on was inactive. n/a: not recorded by these runs.", ""]
    if mech.empty:
        return lines + ["No complete run with a scalars.csv.", ""]
    records = mech.to_dict("records")

    def rows(columns):
        return [r for r in records if any(pd.notna(r[c]) for c in columns)]

    def where(r):
        return {"Algorithm": label(r["algo"]), "Env": env_label(r["env"]), "Budget": r["budget"], "Seeds": r["seeds"]}

    labels = [where(r) | {
        "eq. 9 mean": num(r["eq9_mean"]), "eq. 9 p10": num(r["eq9_p10"]), "eq. 9 at 0": pct(r["eq9_share_at_0"]),
        "eq. 9 at 1": pct(r["eq9_share_at_1"]), "eq. 12 mean": num(r["eq12_mean"]),
        "eq. 12 p10": num(r["eq12_p10"]), "eq. 12 within 0.01 of 1": pct(r["eq12_share_at_1"]),
        "eq. 22 noise std": num(r["eq22_noise_std"]), "eq. 22 clipped": pct(r["eq22_clipped_share"]),
        "Inactive": _inactive_titles(r, ("eq9", "eq12", "eq22"))}
        for r in rows(["eq9_mean", "eq12_mean", "eq22_clipped_share"])]
    policy = [where(r) | {
        "BC loss, final (i ≥ 2)": num(r["bc_loss"]), "random-action loss": num(r["bc_random_action_loss"])
        + (" (derived)" if r["bc_reference"] == "derived" else ""), "ratio": num(r["bc_loss_over_random"]),
        "perfect clone's ratio": num(r["bc_perfect_clone_over_random"]),
        "policy std after BC": num(r["policy_std_after_bc"]), "TRPO sampling std": num(r["sample_std"]),
        "KL / δ": num(r["kl_over_delta"]), "step fraction": num(r["step_fraction"]),
        "padding share": pct(r["padding_share"]), "imagined return (last)": num(r["imagined_return"]),
        "real return (last)": num(r["real_return"]),
        "Inactive": "eq. 11 not judged" if bc_unjudged(r) else _inactive_titles(r, ("bc",))}
        for r in rows(["bc_loss", "kl_over_delta", "imagined_return"])]
    mopo = [where(r) | {"λ × mean penalty": num(r["mopo_penalty"]), "mean model reward": num(r["mopo_model_reward"]),
                        "real return (last)": num(r["real_return"])}
            for r in rows(["mopo_penalty", "mopo_model_reward"])]
    for title, shown, text in (
            ("MUSBO's labels and exploration (eqs. 9, 12, 22)", labels,
             "eq. 9: labels of B(2..I), mean over deployments; eq. 12: at TRPO's imagined samples, mean over "
             "iterations; eq. 22: noise std and share of action entries outside [−1, 1]."),
            ("Behaviour cloning and TRPO", policy,
             "BC: the last epoch's loss of each deployment ≥ 2 (deployment 1 clones the random batch) and the loss "
             "of the best fit to uniform-random actions on the same data (derived: computed from the env's action "
             "size and the eq. 9 label means, for runs made before it was recorded); the perfect clone's ratio: "
             "what a clone of the collecting policy itself would reach on batches carrying eq. 22's mean noise std "
             "(clipped to [−1, 1], at a policy mean of 0). TRPO: the policy's std at its "
             "first iteration (after BC) beside the std imagined actions are sampled with; mean KL over δ and mean "
             "step fraction (1 with KL ≈ δ: the trust region bounds the step; below 1: the line search cut it). "
             "Imagined return: mean reward per imagined step × rollout length, last iteration; real: the eval "
             "return (a whole episode)."),
            ("MOPO's penalty", mopo, "λ × the mean uncertainty penalty of its model rollouts beside their mean "
             "model reward before the penalty.")):
        lines += [f"### {title}", "", text, ""]
        lines += [markdown_table(pd.DataFrame(shown)), ""] if shown else ["No run recorded these.", ""]
    return lines
