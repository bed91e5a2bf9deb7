# Training runs: one job = one `python -m algos.run` = one run directory.
#   results/<profile>/runs/<algo>/<env>/<budget>/seed<N>/            the main grid       (rule run)
#   results/<profile>/ablations/<ablation>/<env>/<budget>/seed<N>/   MUSBO, one switch   (rule ablation_run)
#   results/<profile>/readings/<reading>/<env>/<budget>/seed<N>/     MUSBO, one reading  (rule reading_run)
#   results/<profile>/readings/<reading>/<algo>/<env>/<budget>/seed<N>/  another algorithm under a reading
# Each job runs the resolved config written beside its directory (seed<N>.run_config.yaml,
# rules/common.smk), so a job runs exactly the merged config, and a changed config (a newer
# file) reruns exactly its runs: --replace-stale moves the old run aside into
# <run>/stale-<hash>/ and starts at deployment 1; the same config resumes after the last
# finished deployment. Only the run's result files are declared outputs, as update(): its
# checkpoints/ and batches/ (and its old results) are never deleted by Snakemake.
# A job whose run directory is locked by another process (a second workflow on the same results
# tree) waits for it at most the job's runtime (--lock-wait; a resource, not a param, so that
# editing runtime_min reruns nothing), then resumes: a run the other one finished trains nothing.
# Time limits (rules/common.smk): a job's runtime is capped at resources.max_runtime_min, the run
# stops itself before it (--stop-after-min, exit 75) and the retry resumes inside the phase; it
# also checkpoints every resources.checkpoint_every_min. `exec`: SIGTERM (SLURM's, at the limit)
# reaches the run itself, which saves at its next poll (Snakemake waits for it).
# The profiles' keep-incomplete keeps a failed job's Snakemake from deleting result files, which
# may be another workflow's finished run.


for run_kind, run_rule, run_wildcard in (
    ("runs", "run", "algo"),
    ("ablations", "ablation_run", "ablation"),
    ("readings", "reading_run", "reading"),
):

    rule:
        name:
            run_rule
        input:
            run_config=run_config_input(run_kind),
        output:
            **run_outputs(f"{RESULTS}/{run_kind}/{{{run_wildcard}}}/{{env}}/{{budget}}/seed{{seed}}"),
        params:
            out=lambda wildcards, output: os.path.dirname(output.metrics),
        log:
            f"{LOGS}/{run_kind}/{{{run_wildcard}}}/{{env}}/{{budget}}/seed{{seed}}.log",
        benchmark:
            f"{BENCHMARKS}/{run_kind}/{{{run_wildcard}}}/{{env}}/{{budget}}/seed{{seed}}.tsv"
        threads: config["resources"]["threads"]
        resources:
            mem_mb=config["resources"]["mem_mb"],
            runtime=lambda wildcards: job_runtime_min(wildcards.env),
            gpu=config["resources"]["gpu"],
            stop_after_min=lambda wildcards: stop_after_min(wildcards.env),
            checkpoint_every_min=f"{CHECKPOINT_EVERY_MIN:g}",
        retries: training_retries()
        conda:
            "../environment.yml"
        shell:
            "exec python -m algos.run --run-config {input.run_config} --out {params.out} --replace-stale"
            " --lock-wait $((60 * {resources.runtime})) --stop-after-min {resources.stop_after_min}"
            " --checkpoint-every-min {resources.checkpoint_every_min} > {log} 2>&1"


if not RESOLVE_NOW:
    # Snakemake's own Python lacks the project's packages (--use-conda): each run's config is
    # resolved and checked by a job in the conda environment instead, from what it depends on
    # (its env's run section and its switches: rules/common.smk, _request).

    rule run_config:
        localrule: True
        input:
            f"{RESULTS}/run_requests/{{kind}}/{{name}}/{{env}}/{{budget}}/seed{{seed}}.yaml",
        output:
            f"{RESULTS}/{{kind}}/{{name}}/{{env}}/{{budget}}/seed{{seed}}.run_config.yaml",
        wildcard_constraints:
            kind="|".join(RUN_KINDS),
            name="|".join([ALGO_PATTERN, ABLATION_PATTERN, READING_PATTERN]),
        params:
            algo=lambda wildcards: variant_algo(wildcards.kind, wildcards.name),
            switches=lambda wildcards: " ".join(["--set", *SWITCHES[wildcards.kind][wildcards.name]])
            if wildcards.kind != "runs"
            else "",
            profile=lambda wildcards: PROFILE,
        conda:
            "../environment.yml"
        shell:
            "python -m algos.config write-run-config --out {output} --profile {params.profile}"
            " --algo {params.algo} --env {wildcards.env} --budget {wildcards.budget} --seed {wildcards.seed}"
            " --workflow-config {input} {params.switches}"
