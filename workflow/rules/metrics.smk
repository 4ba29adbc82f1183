rule metrics:
    """Norm, distance, velocity, alignments, spectrum, forgetting matrix along `step`."""
    input:
        ntk=f"{R}/runs/{{run}}/{{shift}}/ntk.nc",
    output:
        f"{R}/runs/{{run}}/{{shift}}/metrics.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/metrics.log",
    conda:
        CONDA_ENV
    params:
        metrics={
            **{k: config["metrics"][k] for k in ("kernel", "centered", "spectrum_top")},
            "status": config["status"],
        },
        code=ntksmk.code_hash("ntkpipe.stages.measures"),
    script:
        "../scripts/metrics.py"


rule collect:
    """Every run's metrics in one dataset with the sweep parameters as dimensions."""
    input:
        METRICS,
    output:
        SUMMARY,
    log:
        f"{OUT}/logs/collect.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        # each run's sweeps; the whole config reaches the summary's attributes through
        # snakemake.config, not params, so a setting only some jobs use does not rerun it
        sweeps=ntksweep.run_sweeps(config),
        code=ntksmk.code_hash("ntkpipe.summary"),
    script:
        "../scripts/collect.py"
