# The MUSBO reproduction workflow: every run of the paper's grid, then every figure and table.
#
#   snakemake all --profile profiles/local                                 # paper grid (150 runs)
#   snakemake all --profile profiles/local --configfile config/mini.yaml   # mini grid (60 runs)
#   snakemake paper_figures/fig2.pdf --profile profiles/local              # one figure: its runs only
#   snakemake all --profile profiles/slurm                                 # on a SLURM cluster
# (Targets first: --configfile takes every word after it as a config file.)
#
# Jobs (the grid comes from the config; config/paper.yaml is the default, a --configfile such as
# config/mini.yaml or config/smoke.yaml is deep-merged over it and changes only some keys):
#   run           algos x envs x budgets x seeds, one `python -m algos.run` each
#                 -> results/<profile>/runs/<algo>/<env>/<budget>/seed<N>/
#   ablation_run  MUSBO x ablations on ablation_env at ablation_budget x ablation_seeds
#                 -> results/<profile>/ablations/<ablation>/<env>/<budget>/seed<N>/
#   fig2..fig6, table1, table2, aggregate, ablation, claims, report: `python -m analysis TARGET`
#                 -> paper_figures/ (see ANALYSIS_OUTPUTS in rules/common.smk)
#   all           every figure and table
# Each run directory holds metrics.csv (written last), eval_returns.csv, model_eval.csv,
# config.yaml and provenance.json, plus batches/ and checkpoints/ from which it resumes.
# Per-job logs go to logs/<profile>/, benchmark files to benchmarks/<profile>/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/paper.yaml"


include: "rules/common.smk"


wildcard_constraints:
    algo=ALGO_PATTERN,
    env=ENV_PATTERN,
    budget=BUDGET_PATTERN,
    seed=r"\d+",
    ablation=ABLATION_PATTERN,


localrules:
    all,


rule all:
    """Every figure and table of the paper (and the aggregate, ablation, claims and report)."""
    default_target: True
    input:
        [f"{FIGURES}/{file}" for files in ANALYSIS_OUTPUTS.values() for file in files],


include: "rules/runs.smk"
include: "rules/analysis.smk"
