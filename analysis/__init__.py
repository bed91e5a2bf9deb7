"""Run outputs -> paper_figures/: Figs. 2-6, Tables 1-2, aggregate and ablation figures, the
claims check and the report. CLI: `python -m analysis TARGET --profile P`; the same targets
as functions in analysis.targets (fig2(...), ..., all_targets(...))."""
