# Analysis: one rule per target of `python -m analysis TARGET`, named after it (`snakemake fig2`,
# or `snakemake paper_figures/fig2.pdf` for the paper profile, paper_figures/<profile>/fig2.pdf
# for another), writing the files of ANALYSIS_OUTPUTS into FIGURES. Each declares the run files
# it reads (analysis_inputs, common.smk), so a figure or table asked for alone runs only the runs
# it needs, and the merged config it is drawn for (WORKFLOW_CONFIG). With --keep-going, a failed
# run leaves its files missing and the targets that read them are not run. Analysis jobs are
# local rules (seconds each; on a cluster they run beside Snakemake). Every output goes into
# `snakemake --report report.html` with its caption (rules/report/<target>.rst).

for analysis_target, analysis_files in ANALYSIS_OUTPUTS.items():

    rule:
        name:
            analysis_target
        localrule: True
        input:
            runs=analysis_inputs(analysis_target),
            config=WORKFLOW_CONFIG,
        output:
            [
                report(
                    f"{FIGURES}/{file}",
                    caption=f"report/{analysis_target}.rst",
                    category=REPORT_CATEGORIES[analysis_target],
                    labels={"profile": PROFILE, "file": file},
                )
                for file in analysis_files
            ],
        params:
            target=analysis_target,
            profile=lambda wildcards: PROFILE,  # a plain "paper" reads to --lint as a path prefix
            results=results_dir,
            out=lambda wildcards, output: os.path.dirname(output[0]),
        log:
            f"{LOGS}/analysis/{analysis_target}.log",
        threads: ANALYSIS_RESOURCES["threads"]
        resources:
            mem_mb=ANALYSIS_RESOURCES["mem_mb"],
            runtime=ANALYSIS_RESOURCES["runtime"],
        conda:
            "../environment.yml"
        shell:
            "python -m analysis {params.target} --profile {params.profile} --config {input.config}"
            " --results {params.results} --out {params.out} > {log} 2>&1"
