# The MUSBO reproduction workflow: every run of the paper's grid, then every figure and table.
#
#   snakemake --cores 8 all                                  # paper grid -> paper_figures/
#   snakemake paper_figures/fig2.pdf                         # one figure: its runs only
#   snakemake --cores 2 all --configfile config/mini.yaml    # mini grid -> paper_figures/mini/
#   snakemake --workflow-profile profiles/slurm all          # on a SLURM cluster
#   snakemake --report report.html [--configfile ...]        # one HTML file: every figure and table
# profiles/default/ (cores, keep-going, retries, ...) is loaded by Snakemake itself.
# (Targets first: --configfile takes every word after it as a config file.)
#
# The config: config/paper.yaml, then any --configfile (deep-merged over it; config/mini.yaml,
# config/smoke.yaml, or a profile of your own), then --config. Checked against
# config/schema.yaml, then every run's config is resolved from it and checked
# (algos.config.resolve_run_config) before any job, and written beside its run directory.
# Jobs:
#   run           algos x envs x budgets x seeds -> results/<profile>/runs/<algo>/<env>/<budget>/seed<N>/
#   ablation_run  MUSBO x ablations on ablation_env, ablation_budget, ablation_seeds
#                 -> results/<profile>/ablations/<ablation>/<env>/<budget>/seed<N>/
#   reading_run   each reading on its algorithms and envs (default: MUSBO on ablation_env), ablation_budget,
#                 ablation_seeds -> results/<profile>/readings/<reading>/[<algo>/]<env>/<budget>/seed<N>/
#                 (<algo>/ for any algorithm but MUSBO; config reading_switches, algos.config.reading_runs)
#   fig2..fig6, table1, table2, aggregate, ablation, readings, diagnostics, claims, report:
#                 `python -m analysis TARGET` -> paper_figures/ (profile paper) or
#                 paper_figures/<profile>/ (see ANALYSIS_OUTPUTS in rules/common.smk)
#   all           every figure and table
# Each run directory holds metrics.csv (written last), eval_returns.csv, model_eval.csv,
# config.yaml and provenance.json, plus batches/ and checkpoints/ from which it resumes.
# Per-job logs go to logs/<profile>/, run benchmark files to benchmarks/<profile>/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/paper.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    algo=ALGO_PATTERN,
    env=ENV_PATTERN,
    budget=BUDGET_PATTERN,
    seed=SEED_PATTERN,
    ablation=ABLATION_PATTERN,
    reading=READING_PATTERN,


rule all:
    """Every figure and table of the paper (and the aggregate, ablation, readings, diagnostics,
    claims and report)."""
    default_target: True
    localrule: True
    input:
        [f"{FIGURES}/{file}" for files in ANALYSIS_OUTPUTS.values() for file in files],


include: "rules/runs.smk"
include: "rules/analysis.smk"
