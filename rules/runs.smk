# Training runs: one job = one `python -m algos.run` = one run directory.
#   results/<profile>/runs/<algo>/<env>/<budget>/seed<N>/            the main grid
#   results/<profile>/ablations/<ablation>/<env>/<budget>/seed<N>/   MUSBO with one switch changed
# Only the run's result files are declared outputs (RUN_FILES, common.smk): its checkpoints/ and
# batches/ stay put when a job fails or is killed, so the retry or the next invocation
# (--rerun-incomplete) resumes after the last finished deployment.


rule run:
    """One run of the main grid."""
    output:
        **run_outputs(f"{RESULTS}/runs/{{algo}}/{{env}}/{{budget}}/seed{{seed}}"),
    params:
        profile=PROFILE,
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/runs/{{algo}}/{{env}}/{{budget}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/runs/{{algo}}/{{env}}/{{budget}}/seed{{seed}}.tsv"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=lambda wildcards: config["resources"]["runtime_min"][wildcards.env],
        gpu=config["resources"]["gpu"],
    retries: config["resources"]["retries"]
    conda:
        "../environment.yml"
    shell:
        "python -m algos.run --algo {wildcards.algo} --env {wildcards.env}"
        " --budget {wildcards.budget} --seed {wildcards.seed}"
        " --profile {params.profile} --out {params.out} > {log} 2>&1"


rule ablation_run:
    """One MUSBO run with the --set switches of one ablation (config ablation_switches)."""
    output:
        **run_outputs(f"{RESULTS}/ablations/{{ablation}}/{{env}}/{{budget}}/seed{{seed}}"),
    params:
        algo=ABLATION_ALGO,
        profile=PROFILE,
        out=lambda wildcards, output: os.path.dirname(output.metrics),
        switches=lambda wildcards: set_switches(wildcards.ablation),
    log:
        f"{LOGS}/ablations/{{ablation}}/{{env}}/{{budget}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/ablations/{{ablation}}/{{env}}/{{budget}}/seed{{seed}}.tsv"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=lambda wildcards: config["resources"]["runtime_min"][wildcards.env],
        gpu=config["resources"]["gpu"],
    retries: config["resources"]["retries"]
    conda:
        "../environment.yml"
    shell:
        "python -m algos.run --algo {params.algo} --env {wildcards.env}"
        " --budget {wildcards.budget} --seed {wildcards.seed}"
        " --profile {params.profile} --out {params.out} {params.switches} > {log} 2>&1"
