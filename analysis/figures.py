"""Figures 2-6 of the paper and two beyond it (aggregate, ablation), as PDF + PNG, with the
numbers behind each curve in data/NAME.csv. Every figure names the profile and the seeds
it averages over, and the runs it is missing."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from analysis import summaries  # noqa: E402
from analysis.metrics import Interval  # noqa: E402
from analysis.output import fmt_interval, save_figure, write_csv  # noqa: E402
from algos.config import reading_runs  # noqa: E402
from analysis.results import MODEL_EVAL_ALGOS, SECTION5_BUDGET, RunKey, Study  # noqa: E402

# The paper's return figures: (I x B, envs in the paper's column order).
PAPER_FIGURES = {
    "fig2": ("500k", ("walker2d", "hopper")),
    "fig3": ("500k", ("ant", "cheetah-run", "halfcheetah")),
    "fig4": ("250k", ("walker2d", "hopper")),
    "fig5": ("250k", ("ant", "cheetah-run", "halfcheetah")),
}
ENV_LABELS = {"walker2d": "Walker2d", "hopper": "Hopper", "halfcheetah": "HalfCheetah", "ant": "Ant",
              "cheetah-run": "Cheetah-Run"}
NAME_LABELS = {"musbo": "MUSBO", "bremen": "BREMEN", "mopo": "MOPO"}
# seaborn's colour-blind palette
PALETTE = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#949494"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
RC = {"font.size": 9.5, "axes.titlesize": 10.5, "axes.labelsize": 9.5, "legend.fontsize": 9.5,
      "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}
MAX_LISTED_MISSING = 6  # longer lists go to missing_runs.md only


def label(name: str) -> str:
    return NAME_LABELS.get(name, name.replace("_", " "))


def env_label(env: str) -> str:
    return ENV_LABELS.get(env, env)


def _style(names: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per name: the algorithms keep theirs everywhere, others take the rest."""
    others = [n for n in names if n not in NAME_LABELS]
    index = {**{n: i for i, n in enumerate(NAME_LABELS)}, **{n: len(NAME_LABELS) + i for i, n in enumerate(others)}}
    return {n: (PALETTE[index[n] % len(PALETTE)], MARKERS[index[n] % len(MARKERS)]) for n in names}


def _seeds_text(seeds) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def profile_note(study: Study, seeds) -> str:
    warn = "" if study.profile == "paper" else " (reduced sizes: NOT the paper's numbers)"
    stat = ("lines: mean over seeds · shaded: 95 % bootstrap CI" if len(seeds) > 1 else
            "lines: the single seed (no CI)")
    return f"profile {study.profile}{warn} · {_seeds_text(seeds)}\n{stat}"


def _short(k: RunKey) -> str:
    return f"{label(k.name)} {env_label(k.env)} {k.budget} seed {k.seed}"


def _missing_footnote(fig, missing: list[RunKey], total: int, study: Study | None = None) -> None:
    """A red note under everything else (savefig's tight bbox grows to include it); with the
    study, it says how many of the missing runs were excluded by the input checks."""
    if not missing:
        return
    fig.canvas.draw()  # run the layout, so that the lowest artist's position is known
    bottom = min([0.0] + [a.get_window_extent().y0 / fig.bbox.height for a in fig.legends])
    listed = ", ".join(_short(k) for k in missing[:MAX_LISTED_MISSING])
    more = f", and {len(missing) - MAX_LISTED_MISSING} more" if len(missing) > MAX_LISTED_MISSING else ""
    excluded = f" ({study.exclusion_note(missing)})" if study is not None and study.exclusion_note(missing) else ""
    fig.text(0.5, bottom - 0.01, f"Missing: {len(missing)} of {total} runs{excluded} (see missing_runs.md): {listed}{more}",
             ha="center", va="top", fontsize=8, color="#A00000", wrap=True)


def _empty(ax, text: str) -> None:
    ax.tick_params(left=False, labelleft=False)  # this axes only, also when y is shared
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _band(ax, s: pd.DataFrame, x: str, color: str, marker: str, lbl: str, y: str = "mean") -> None:
    s = s.sort_values(x)
    ax.plot(s[x], s[y], color=color, marker=marker, ms=4, lw=1.8, label=lbl)
    ok = s.low.notna() & s.high.notna()
    if ok.any():
        ax.fill_between(s[x][ok], s.low[ok], s.high[ok], color=color, alpha=0.2, lw=0)


def _legend(fig, names, styles, present) -> None:
    handles = [Line2D([], [], color=styles[n][0], marker=styles[n][1], lw=1.8,
                      label=label(n) + ("" if n in present else " (no runs)")) for n in names]
    # below the axes, in figure coordinates: an "outside" legend would move when savefig
    # crops to the tight bbox
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False)


def _deployment_axis(ax, n_deployments: int, missing_names: list[str]) -> None:
    ax.set_xticks(range(1, n_deployments + 1))
    ax.set_xlim(0.6, n_deployments + 0.4)
    ax.set_xlabel("Deployment" + (f"\nmissing seeds: {', '.join(missing_names)}" if missing_names else ""))


def _missing_by_name(missing: list[RunKey]) -> list[str]:
    by = {}
    for k in missing:
        by.setdefault(label(k.name), []).append(str(k.seed))
    return [f"{n} {','.join(s)}" for n, s in by.items()]


# ---- Figs. 2-5: samples and returns per deployment ----

def return_curves(study: Study, out: Path, name: str) -> list[Path]:
    budget, envs = PAPER_FIGURES[name]
    algos, seeds, cfg = study.algos, study.seeds, study.cfg
    styles = _style(algos)
    data, all_missing, total, present = [], [], 0, set()
    with plt.rc_context(RC):
        fig, axes = plt.subplots(2, len(envs), figsize=(3.9 * len(envs) + 0.5, 5.6), height_ratios=[1, 2.5],
                                 sharex="col", squeeze=False, layout="constrained")
        for j, env in enumerate(envs):
            top, ax = axes[0, j], axes[1, j]
            top.set_title(env_label(env), fontweight="bold")
            in_grid = env in cfg["envs"] and budget in cfg["budgets"]
            keys = study.curve_keys(algos, env, budget, seeds) if in_grid else []
            missing = study.missing(keys)
            all_missing += missing
            total += len(keys)
            n_dep = study.deployments(env)
            curves = study.curves("runs", algos, env, budget, seeds)
            # top: cumulative samples per deployment (from the runs; planned if none exists)
            if not curves.empty:
                samples = curves.groupby("deployment").samples_total.median()
                top.bar(samples.index, samples.to_numpy() / 1e3, width=0.6, color="0.7")
            else:
                per = cfg["run"]["defaults"]["budget_samples"].get(budget, np.nan) / n_dep
                top.bar(range(1, n_dep + 1), per * np.arange(1, n_dep + 1) / 1e3, width=0.6,
                        color="white", edgecolor="0.6", hatch="//", label="planned")
                top.legend(loc="upper left", frameon=False, fontsize=8)
            top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}k"))
            top.tick_params(labelbottom=True)
            # bottom: eval return, mean over seeds and its CI
            summary = summaries.ci_over_seeds(curves, ["name", "deployment"], "eval_return_mean")
            for algo in algos:
                s = summary[summary.name == algo]
                if not s.empty:
                    present.add(algo)
                    _band(ax, s, "deployment", *styles[algo], label(algo))
            if not in_grid:
                _empty(ax, "not in this profile's grid")
            elif curves.empty:
                _empty(ax, "no completed runs")
            _deployment_axis(ax, n_dep, _missing_by_name(missing))
            if j == 0:
                top.set_ylabel("Cumulative\nsamples")
                ax.set_ylabel("Eval return (real env)")
            summary.insert(0, "env", env)
            summary.insert(1, "budget", budget)
            data.append(summary)
        _legend(fig, algos, styles, present)
        fig.suptitle(f"Fig. {name[3:]}: I × B = {budget} · {', '.join(map(env_label, envs))}\n"
                     f"{profile_note(study, seeds)}", fontsize=10.5)
        _missing_footnote(fig, all_missing, total, study)
        paths = save_figure(fig, Path(out), name)
    return paths + [write_csv(Path(out) / "data" / f"{name}.csv", pd.concat(data, ignore_index=True))]


# ---- Fig. 6: model accuracy ----

FIG6_PANELS = (("energy_distance", "Energy distance: imagined vs real states"),
               ("trajectory_mse", "Trajectory-wise MSE: imagined vs real"))


def fig6(study: Study, out: Path) -> list[Path]:
    env, names, seeds = study.cfg["model_eval_env"], list(MODEL_EVAL_ALGOS), study.ablation_seeds
    keys = study.model_eval_keys()
    missing = [k for k in keys if not (study.exists(k) and (k.path(study.root) / "model_eval.csv").is_file())]
    data = summaries.model_eval(study)
    styles = _style(names)
    n_dep = study.deployments(env)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.9), layout="constrained")
        for ax, (metric, title) in zip(axes, FIG6_PANELS):
            d = data[data.metric == metric]
            for n in names:
                if not d[d.name == n].empty:
                    _band(ax, d[d.name == n], "deployment", *styles[n], label(n))
            if d.empty:
                _empty(ax, "no model_eval.csv found")
            elif (d["mean"] > 0).all() and d["mean"].max() / d["mean"].min() > 100:
                ax.set_yscale("log")
            ax.set_title(title + "\n(lower is better)")
            _deployment_axis(ax, n_dep, _missing_by_name(missing))
        axes[0].set_ylabel("Energy distance")
        axes[1].set_ylabel("Trajectory MSE")
        _legend(fig, names, styles, set(data.name))
        fig.suptitle(f"Fig. 6: accuracy of imagined rollouts on {env_label(env)}, I × B = {SECTION5_BUDGET}\n"
                     f"{profile_note(study, seeds)}", fontsize=10.5)
        _missing_footnote(fig, missing, len(keys), study)
        paths = save_figure(fig, Path(out), "fig6")
    return paths + [write_csv(Path(out) / "data" / "fig6.csv", data)]


# ---- beyond the paper: aggregate over envs ----

def aggregate(study: Study, out: Path) -> list[Path]:
    agg = summaries.aggregate(study)
    budgets, algos = list(study.cfg["budgets"]), study.algos
    styles = _style(algos)
    keys = study.main_keys()
    missing = study.missing(keys)
    with plt.rc_context(RC):
        fig, (ax_iqm, ax_poi) = plt.subplots(1, 2, figsize=(10.2, 0.9 + 0.55 * len(budgets) * len(algos)),
                                             layout="constrained")
        ticks, names = [], []
        for b_i, budget in enumerate(budgets):
            for a_i, algo in enumerate(algos):
                y = -(b_i * (len(algos) + 1) + a_i)
                r = agg[(agg.measure == "iqm") & (agg.budget == budget) & (agg.name == algo)]
                if not r.empty and np.isfinite(r.point.iloc[0]):
                    _interval(ax_iqm, r.iloc[0], y, styles[algo][0])
                ticks.append(y)
                names.append(f"{label(algo)} · {budget}{_envs_missed(r, study)}")
        ax_iqm.set_yticks(ticks, names)
        ax_iqm.axvline(0, color="0.5", lw=0.8, ls=":")
        ax_iqm.axvline(1, color="0.5", lw=0.8, ls=":")
        ax_iqm.set_xlabel("IQM of normalised final return\n(0 = uniform random policy, 1 = best algorithm's mean)")
        ax_iqm.set_title("Final return across envs")
        ticks, names = [], []
        bases = [a for a in algos if a != "musbo"]
        for b_i, budget in enumerate(budgets):
            for k, base in enumerate(bases):
                y = -(b_i * (len(bases) + 1) + k)
                r = agg[(agg.measure == "poi") & (agg.budget == budget) & (agg.name == f"musbo>{base}")]
                if not r.empty and np.isfinite(r.point.iloc[0]):
                    _interval(ax_poi, r.iloc[0], y, styles[base][0])
                ticks.append(y)
                names.append(f"MUSBO > {label(base)} · {budget}{_envs_missed(r, study)}")
        ax_poi.set_yticks(ticks, names)
        ax_poi.set_xlim(-0.03, 1.03)
        ax_poi.axvline(0.5, color="0.3", lw=1, ls="--")
        ax_poi.set_xlabel("P(MUSBO's final return > baseline's)\n(0.5 = no difference)")
        ax_poi.set_title("Probability of improvement")
        for ax in (ax_iqm, ax_poi):
            ax.grid(axis="y", visible=False)
        fig.suptitle(f"Aggregate over envs ({', '.join(map(env_label, study.cfg['envs']))})\n"
                     f"{profile_note(study, study.seeds).splitlines()[0]} per env\n"
                     "point: estimate · bar: 95 % stratified bootstrap CI (runs resampled within each env)",
                     fontsize=10.5)
        _missing_footnote(fig, missing, len(keys), study)
        paths = save_figure(fig, Path(out), "aggregate")
    return paths + [write_csv(Path(out) / "aggregate.csv", agg),
                    write_csv(Path(out) / "data" / "normalised_final_returns.csv",
                              summaries.normalised_final_returns(study))]


def _envs_missed(r: pd.DataFrame, study: Study) -> str:
    """The tick label's note on an aggregate row that misses envs of the grid."""
    return summaries.envs_missed(int(r.n_envs.iloc[0]) if len(r) else 0, len(study.cfg["envs"]))


def _interval(ax, r, y: float, color: str) -> None:
    has_ci = np.isfinite(r.low) and np.isfinite(r.high)
    xerr = [[r.point - r.low], [r.high - r.point]] if has_ci else None
    ax.errorbar(r.point, y, xerr=xerr, fmt="o", color=color, ms=6, capsize=4, lw=2)
    ax.annotate(f"{r.point:.2f}" + (f" [{r.low:.2f}, {r.high:.2f}]" if has_ci else " (no CI)"),
                (r.point, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=8)


# ---- beyond the paper: MUSBO vs its ablations ----

def ablation(study: Study, out: Path) -> list[Path]:
    cfg, seeds = study.cfg, study.ablation_seeds
    env, budget, ablations = cfg["ablation_env"], cfg["ablation_budget"], list(cfg.get("ablations", []))
    ref = study.curves("runs", ["musbo"], env, budget, seeds)
    ref_summary = summaries.ci_over_seeds(ref, ["name", "deployment"], "eval_return_mean")
    keys = study.ablation_reference_keys() + study.ablation_keys()
    missing = study.missing(keys)
    styles = _style(["musbo"] + ablations)
    n_dep = study.deployments(env)
    data = [ref_summary]
    with plt.rc_context(RC):
        n = max(len(ablations), 1)
        fig, axes = plt.subplots(1, n, figsize=(3.9 * n + 0.4, 3.9), sharey=True, squeeze=False,
                                 layout="constrained")
        for ax, ab in zip(axes[0], ablations or [None]):
            if not ref_summary.empty:
                _band(ax, ref_summary, "deployment", *styles["musbo"], "MUSBO (full)")
            if ab is None:
                _empty(ax, "no ablations in this profile")
                continue
            s = summaries.ci_over_seeds(study.curves("ablations", [ab], env, budget, seeds),
                                        ["name", "deployment"], "eval_return_mean")
            data.append(s)
            if s.empty:
                _empty(ax, "no completed ablation runs")
            else:
                _band(ax, s, "deployment", *styles[ab], label(ab))
            ax.set_title(f"MUSBO vs {label(ab)}")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", frameon=False, fontsize=8.5)
            _deployment_axis(ax, n_dep, _missing_by_name([k for k in missing if k.name in ("musbo", ab)]))
        axes[0, 0].set_ylabel("Eval return (real env)")
        fig.suptitle(f"Ablations of MUSBO on {env_label(env)}, I × B = {budget}\n"
                     f"{profile_note(study, seeds)}", fontsize=10.5)
        _missing_footnote(fig, missing, len(keys), study)
        paths = save_figure(fig, Path(out), "ablation")
    return paths + [write_csv(Path(out) / "data" / "ablation.csv", pd.concat(data, ignore_index=True))]


# ---- beyond the paper: MUSBO's own diagnostics (scalars.csv) ----

DIAGNOSTIC_PANELS = (  # (quantities: solid, then dashed; y label)
    (("eq9_mean", "eq9_share_at_0"), "Eq. 9 label"),
    (("eq12_mean",), "Eq. 12 label"),
    (("real_return", "imagined_return"), "Return"),
    (("live_imagined_samples",), "Live imagined\nsamples"),
)
DIAGNOSTIC_KEY = ("row 1: eq. 9 labels of each new batch, mean (solid) and share within 0.01 of 0 (dashed) · "
                  "row 2: eq. 12 labels, mean over TRPO iterations\nrow 3: real eval return (solid) vs imagined "
                  "return of the last TRPO iteration (dashed: mean reward per imagined step × rollout length) · "
                  "row 4: live imagined samples per TRPO iteration, mean")


def diagnostics(study: Study, out: Path) -> list[Path]:
    """Per env (columns) and algorithm (colours), per deployment, from each run's scalars.csv:
    eq. 9 labels (mean, share at 0), eq. 12 labels, imagined vs real return (the model-exploitation
    gap; the imagined return covers TRPO's rollout length, the real one a whole episode), live
    imagined samples. What no run recorded is named, not drawn."""
    budget, envs, algos, seeds = SECTION5_BUDGET, list(study.cfg["envs"]), study.algos, study.seeds
    data, lacking = summaries.diagnostics(study, budget)
    styles = _style(algos)
    keys = [k for k in study.main_keys() if k.budget == budget]
    missing = study.missing(keys)
    summary = (summaries.ci_over_seeds(data, ["quantity", "name", "env", "deployment"], "value") if len(data)
               else pd.DataFrame(columns=["quantity", "name", "env", "deployment"] + summaries.SUMMARY_COLUMNS))
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(DIAGNOSTIC_PANELS), len(envs), figsize=(3.3 * len(envs) + 0.5, 2.5 * len(DIAGNOSTIC_PANELS)),
                                 squeeze=False, sharex="col", layout="constrained")
        for i, (quantities, title) in enumerate(DIAGNOSTIC_PANELS):
            for j, env in enumerate(envs):
                ax = axes[i, j]
                drawn = False
                for q_i, q in enumerate(quantities):
                    for algo in algos:
                        s = summary[(summary.quantity == q) & (summary.name == algo) & (summary.env == env)]
                        if s.empty:
                            continue
                        s = s.sort_values("deployment")
                        ax.plot(s.deployment, s["mean"], color=styles[algo][0], marker=styles[algo][1], ms=3.5,
                                lw=1.6, ls="-" if q_i == 0 else "--")
                        ok = s.low.notna() & s.high.notna()
                        if ok.any():
                            ax.fill_between(s.deployment[ok], s.low[ok], s.high[ok], color=styles[algo][0], alpha=0.15, lw=0)
                        drawn = True
                if not drawn:
                    _empty(ax, "not recorded")
                if i == 0:
                    ax.set_title(env_label(env), fontweight="bold")
                if j == 0:
                    ax.set_ylabel(title)
                _deployment_axis(ax, study.deployments(env), [])
                if i < len(DIAGNOSTIC_PANELS) - 1:
                    ax.set_xlabel("")
        _legend(fig, algos, styles, set(data.name))
        absent = [q for q, runs in lacking.items() if runs]
        note = ("" if not absent else "\nnot recorded by every run that should: " + "; ".join(
            f"{q} ({len(lacking[q])} runs)" for q in absent))
        fig.suptitle(f"Diagnostics per deployment, I × B = {budget} (scalars.csv of each run)\n"
                     f"{profile_note(study, seeds)}\n{DIAGNOSTIC_KEY}{note}", fontsize=10)
        _missing_footnote(fig, missing, len(keys), study)
        paths = save_figure(fig, Path(out), "diagnostics")
    missing_rows = pd.DataFrame([(q, str(k)) for q, runs in lacking.items() for k in runs], columns=["quantity", "run"])
    return paths + [write_csv(Path(out) / "data" / "diagnostics.csv", summary),
                    write_csv(Path(out) / "data" / "diagnostics_not_recorded.csv", missing_rows)]


# ---- beyond the paper: runs under each reading (eqs. 9, 12, 22; the batch assembly; ...) ----

def reading_keys(study: Study) -> list[RunKey]:
    """results/<profile>/readings/<reading>[/<algo>]/<env>/<ablation_budget>/seed<N>/: each reading on
    its algorithms and envs (algos.config.reading_runs; MUSBO on the ablation env by default)."""
    c = study.cfg
    return [RunKey("readings", name, env, c["ablation_budget"], s)
            for _, _, env, name in reading_runs(c) for s in study.ablation_seeds]


def reading_reference_keys(study: Study) -> list[RunKey]:
    """The default run (runs/<algo>/<env>/) of each algorithm and env that a reading runs on, and
    MUSBO's on the ablation env, at the ablation budget and seeds."""
    c = study.cfg
    pairs = dict.fromkeys([("musbo", c["ablation_env"])] + [(a, e) for _, a, e, _ in reading_runs(c)])
    return [RunKey("runs", a, e, c["ablation_budget"], s) for a, e in pairs for s in study.ablation_seeds]


def reading_finals(study: Study) -> pd.DataFrame:
    """Final eval return per reading run (name = its folder, e.g. batch_full/bremen) and per default
    run (name = the algo), per env, at the ablation budget: mean over the ablation seeds with its CI
    (rows name/env/mean/low/high/n)."""
    keys = reading_keys(study) + reading_reference_keys(study)
    m = study._read_runs([k for k in keys if study.exists(k)], "metrics.csv")
    last = m[m.deployment == m.env.map(study.deployments)] if len(m) else m
    if last.empty:
        return pd.DataFrame(columns=["name", "env"] + summaries.SUMMARY_COLUMNS)
    return summaries.ci_over_seeds(last, ["name", "env"], "eval_return_mean")


def readings(study: Study, out: Path) -> list[Path]:
    """Each reading run (config `readings`, `reading_switches`) against the default run of its
    algorithm on its env, at the ablation budget, in the ablation figure's style; final returns
    in the titles. One panel per reading, algorithm and env."""
    cfg, seeds, budget = study.cfg, study.ablation_seeds, study.cfg["ablation_budget"]
    panels = reading_runs(cfg)                                        # (reading, algo, env, name)
    keys = reading_reference_keys(study) + reading_keys(study)
    missing = study.missing(keys)
    finals = reading_finals(study)
    styles = _style(list(dict.fromkeys([a for _, a, _, _ in panels] + ["musbo"] + [n for *_, n in panels])))
    runs = study._read_runs([k for k in keys if study.exists(k)], "metrics.csv")
    data = []

    def final(name, env):
        r = finals[(finals.name == name) & (finals.env == env)]
        return "no runs" if r.empty else fmt_interval(Interval(*r.iloc[0][["mean", "low", "high"]]), 0)

    def curve(kind, name, env):
        sub = runs[(runs.kind == kind) & (runs.name == name) & (runs.env == env)] if len(runs) else runs
        return summaries.ci_over_seeds(sub, ["name", "env", "deployment"], "eval_return_mean") if len(sub) else sub

    with plt.rc_context(RC):
        n = max(len(panels), 1)
        cols = min(n, 4)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols + 0.4, 3.9 * rows), squeeze=False,
                                 layout="constrained")
        for ax, panel in zip(axes.flat, panels or [None]):
            if panel is None:
                _empty(ax, "no readings in this profile")
                continue
            reading, algo, env, name = panel
            ref, s = curve("runs", algo, env), curve("readings", name, env)
            data += [d for d in (ref, s) if len(d)]
            if len(ref):
                _band(ax, ref, "deployment", *styles[algo], f"{label(algo)} (defaults)")
            if s.empty:
                _empty(ax, "no completed runs")
            else:
                _band(ax, s, "deployment", *styles[name], label(reading))
            ax.set_title(f"{label(reading)}: {label(algo)}, {env_label(env)}\nfinal: {final(name, env)} vs "
                         f"defaults {final(algo, env)}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", frameon=False, fontsize=8)
            _deployment_axis(ax, study.deployments(env), _missing_by_name(
                [k for k in missing if k.env == env and k.name in (algo, name)]))
            ax.set_ylabel("Eval return (real env)")
        for ax in list(axes.flat)[len(panels or [None]):]:
            ax.set_visible(False)
        fig.suptitle(f"Each reading against its algorithm's defaults on its env, I × B = {budget}\n"
                     f"{profile_note(study, seeds)}", fontsize=10.5)
        _missing_footnote(fig, missing, len(keys), study)
        paths = save_figure(fig, Path(out), "readings")
    data = data or [pd.DataFrame(columns=["name", "env", "deployment"] + summaries.SUMMARY_COLUMNS)]
    return paths + [write_csv(Path(out) / "data" / "readings.csv", pd.concat(data, ignore_index=True)),
                    write_csv(Path(out) / "data" / "readings_final.csv", finals)]
