# Analysis: one rule per target of `python -m analysis TARGET`, named after it (`snakemake fig2`
# or `snakemake paper_figures/fig2.pdf`), writing the files of ANALYSIS_OUTPUTS into
# paper_figures/. Each declares the run files it reads (analysis_inputs, common.smk), so a
# figure or table asked for alone runs only the runs it needs. With --keep-going, a failed run
# leaves its files missing and the targets that read them are not run.

for analysis_target, analysis_files in ANALYSIS_OUTPUTS.items():

    rule:
        name:
            analysis_target
        input:
            analysis_inputs(analysis_target),
        output:
            [f"{FIGURES}/{file}" for file in analysis_files],
        params:
            target=analysis_target,
            profile=lambda wildcards: PROFILE,  # a plain "paper" reads to --lint as a path prefix
            results=results_dir,
            out=lambda wildcards, output: os.path.dirname(output[0]),
        log:
            f"{LOGS}/analysis/{analysis_target}.log",
        benchmark:
            f"{BENCHMARKS}/analysis/{analysis_target}.tsv"
        threads: ANALYSIS_RESOURCES["threads"]
        resources:
            mem_mb=ANALYSIS_RESOURCES["mem_mb"],
            runtime=ANALYSIS_RESOURCES["runtime"],
        conda:
            "../environment.yml"
        shell:
            "python -m analysis {params.target} --profile {params.profile}"
            " --results {params.results} --out {params.out} > {log} 2>&1"
