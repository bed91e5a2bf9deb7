"""The targets of `python -m analysis TARGET`, one Python function each:

    fig2(profile, results=None, out="paper_figures", cfg=None) -> list of written paths

and likewise fig3 ... report, readings, diagnostics, and all_targets. `results` defaults to
results/PROFILE; `cfg` defaults to the profile's config (algos.config.load_profile; the workflow
passes its merged config). The workflow writes the paper profile's files into paper_figures/ and
every other profile's into paper_figures/PROFILE/ (figures_dir). Every target but table2 needs
at least one run of the profile's grid, and also writes OUT/missing_runs.md (the same text
whichever target writes it)."""
from __future__ import annotations

from pathlib import Path

from analysis import claims as claims_mod
from analysis import figures, report as report_mod, tables
from analysis.output import write_text
from analysis.profile import load_profile
from analysis.results import Study

MISSING_RUNS = "missing_runs.md"

# `all` makes them in this order (the report last: it links the others).
TARGETS = (*figures.PAPER_FIGURES, "fig6", "table1", "table2", "aggregate", "ablation", "readings", "diagnostics",
           "claims", "report", "all")
CONFIG_ONLY = {"table2"}  # needs no run
# The module whose function of the target's name makes it from a Study (the rest: analysis.figures).
_MODULES = {"table1": tables, "claims": claims_mod, "report": report_mod}


def figures_dir(profile: str) -> Path:
    """Where a profile's figures and tables go: paper_figures/ for the paper profile, else
    paper_figures/PROFILE/ (so no profile's file stands in for another's)."""
    return Path("paper_figures") if profile == "paper" else Path("paper_figures") / profile


def _make(name: str, study: Study, out: Path, paper_cfg: dict) -> list[Path]:
    if name in figures.PAPER_FIGURES:
        return figures.return_curves(study, out, name)
    if name == "table2":
        return tables.table2(paper_cfg, study.cfg, out)
    return getattr(_MODULES.get(name, figures), name)(study, out)


def run(target: str, profile: str, results: Path | str | None = None, out: Path | str = "paper_figures",
        cfg: dict | None = None, paper_cfg: dict | None = None) -> list[Path]:
    """Make one target (or `all`) and return the paths written."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    cfg = load_profile(profile) if cfg is None else cfg
    paper_cfg = (cfg if profile == "paper" else load_profile("paper")) if paper_cfg is None else paper_cfg
    study = Study(cfg, Path(results) if results is not None else Path("results") / profile)
    out = Path(out)
    names = list(TARGETS[:-1]) if target == "all" else [target]
    paths = []
    if set(names) - CONFIG_ONLY:
        study.require_runs()
        paths.append(write_text(out / MISSING_RUNS, study.missing_report()))
    for name in names:
        paths += _make(name, study, out, paper_cfg)
    return paths


def _target(name: str):
    def make(profile: str, results: Path | str | None = None, out: Path | str = "paper_figures",
             cfg: dict | None = None) -> list[Path]:
        return run(name, profile, results, out, cfg)
    make.__name__ = make.__qualname__ = name if name != "all" else "all_targets"
    make.__doc__ = f"`python -m analysis {name}`: see analysis.targets."
    return make


fig2, fig3, fig4, fig5, fig6 = _target("fig2"), _target("fig3"), _target("fig4"), _target("fig5"), _target("fig6")
table1, table2, aggregate, ablation = _target("table1"), _target("table2"), _target("aggregate"), _target("ablation")
readings, diagnostics = _target("readings"), _target("diagnostics")
claims, report, all_targets = _target("claims"), _target("report"), _target("all")
