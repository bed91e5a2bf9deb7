"""paper_figures/report.md: every figure and table with links, and where the numbers come
from (profile, seeds, git commits and devices recorded by the runs, missing runs)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from algos.run import PHASES
from analysis.figures import PAPER_FIGURES, env_label, label
from analysis.output import markdown_table, write_text
from analysis.results import Study
from analysis.tables import TABLE1, TABLE2, TABLE2_PROFILE


# (output name, heading, what it shows); Figs. 2-5 are described from PAPER_FIGURES
SECTIONS = [
    *((name, f"Fig. {name[3:]}", f"returns per deployment, {', '.join(map(env_label, envs))}, {budget}")
      for name, (budget, envs) in PAPER_FIGURES.items()),
    ("fig6", "Fig. 6", "accuracy of imagined rollouts (energy distance, trajectory MSE), MUSBO vs BREMEN"),
    ("aggregate", "Aggregate (beyond the paper)", "IQM of normalised final returns and probability of "
     "improvement across envs, stratified bootstrap CIs; numbers in aggregate.csv"),
    ("ablation", "Ablations (beyond the paper)", "MUSBO against each of its ablations"),
]


def _figure_section(out: Path, name: str, heading: str, what: str) -> list[str]:
    made = (out / f"{name}.pdf").is_file()
    lines = [f"### {heading}: {what}", ""]
    if not made:
        return lines + [f"_not generated yet: `python -m analysis {name} ...`_", ""]
    return lines + [f"![{heading}](png/{name}.png)", "",
                    f"[PDF]({name}.pdf) · [data](data/{name}.csv)" if (out / "data" / f"{name}.csv").is_file()
                    else f"[PDF]({name}.pdf)", ""]


def _table_section(out: Path, name: str, heading: str) -> list[str]:
    md = out / f"{name}.md"
    if not md.is_file():
        return [f"### {heading}", "", "_not generated yet: `python -m analysis table1 ...`_", ""]
    body = md.read_text().split("\n", 1)[1].strip()  # drop the file's own title
    return [f"### {heading}", "", f"[CSV]({name}.csv) · [Markdown]({name}.md) · [LaTeX]({name}.tex)", "", body, ""]


def _hyperparameter_section(out: Path, name: str, heading: str) -> list[str]:
    """Links and a one-line check (the table itself is long): which stated values differ."""
    csv = out / f"{name}.csv"
    if not csv.is_file():
        return [f"### {heading}", "", "_not generated yet: `python -m analysis table2 ...`_", ""]
    t = pd.read_csv(csv, keep_default_na=False)
    stated = t[t.matches_paper.isin(["yes", "NO"])]
    differ = stated[stated.matches_paper == "NO"].hyperparameter.tolist()
    check = (f"All {len(stated)} hyperparameters the paper states match it." if not differ else
             f"{len(differ)} of {len(stated)} hyperparameters the paper states differ from it: {', '.join(differ)}.")
    return [f"### {heading}", "", f"[CSV]({name}.csv) · [Markdown]({name}.md) · [LaTeX]({name}.tex)", "", check, ""]


def provenance_lines(study: Study) -> list[str]:
    prov = study.provenance()
    planned = study.planned_keys()
    present = [k for k in planned if study.exists(k)]
    commits = Counter(str(p.get("git_commit", "unknown")) for p in prov)
    devices = Counter(str(p.get("device", "unknown")) for p in prov)
    starts = [p["start_time"] for p in prov if p.get("start_time")]
    ends = [p["end_time"] for p in prov if p.get("end_time")]
    lines = [f"- Profile: `{study.profile}`; results: `{study.root}`",
             f"- Seeds: {', '.join(map(str, study.seeds))} (main curves); "
             f"{', '.join(map(str, study.ablation_seeds))} (Table 1, Fig. 6, ablations)",
             f"- Runs: {len(present)} of {len(planned)} planned present; "
             f"{len(planned) - len(present)} missing ([missing_runs.md](missing_runs.md))",
             "- Git commits of the runs (provenance.json): "
             + (", ".join(f"`{c}` ({n} runs)" for c, n in commits.most_common()) or "none recorded"),
             "- Devices: " + (", ".join(f"{d} ({n})" for d, n in devices.most_common()) or "none recorded")]
    if starts and ends:
        lines.append(f"- Runs started {min(starts)}, last finished {max(ends)}")
    if len(commits) > 1:
        lines.append("- **The runs come from more than one commit**: compare with care.")
    return lines


def compute_table(study: Study) -> pd.DataFrame:
    """Wall-clock seconds per phase summed over deployments, median over runs, per algorithm."""
    m = study.metrics
    cols = [f"{p}_s" for p in PHASES if f"{p}_s" in m.columns]
    if m.empty or not cols:
        return pd.DataFrame()
    per_run = m.groupby(["kind", "name", "env", "budget", "seed"])[cols].sum()
    per_run["total_s"] = per_run.sum(axis=1)
    med = per_run.groupby(level="name").median().round(1)
    med.insert(0, "runs", per_run.groupby(level="name").size())
    med.index = [label(n) for n in med.index]
    return med.reset_index(names="algorithm / ablation")


def report(study: Study, out: Path) -> list[Path]:
    out = Path(out)
    warn = ([] if study.profile == "paper" else
            [f"> **Profile `{study.profile}` uses reduced sizes: these are NOT the paper's numbers.** "
             "Every figure and table says which profile made it.", ""])
    lines = [f"# MUSBO reproduction: report for profile `{study.profile}`", "", *warn,
             "## Provenance", "", *provenance_lines(study), "",
             "## Claims", "", "Each empirical claim of the paper with our number, CI and verdict: "
             "[claims.md](claims.md) ([CSV](claims.csv)).", ""]
    claims_md = out / "claims.md"
    if claims_md.is_file():
        summary = [ln for ln in claims_md.read_text().splitlines() if ln.startswith("Summary of ")]
        lines += summary + [""]
    lines += ["## Figures", ""]
    for name, heading, what in SECTIONS:
        lines += _figure_section(out, name, heading, what)
    lines += ["## Tables", ""]
    lines += _table_section(out, TABLE1, "Table 1: novelty of each batch")
    lines += _hyperparameter_section(out, TABLE2, "Table 2: hyperparameters (config/paper.yaml vs the paper)")
    if study.profile != "paper":
        lines += _hyperparameter_section(out, TABLE2_PROFILE, f"Hyperparameters of profile `{study.profile}` "
                                         "(reduced on purpose)")
    comp = compute_table(study)
    if not comp.empty:
        lines += ["## Compute", "", "Median over runs of the wall-clock seconds per phase (summed over "
                  "deployments), from metrics.csv:", "", markdown_table(comp)]
    return [write_text(out / "report.md", "\n".join(lines) + "\n")]
