rule metrics:
    """Norm, distance, velocity, alignments, spectrum, forgetting matrix along `step`."""
    input:
        ntk=f"{R}/runs/{{run}}/{{shift}}/ntk.nc",
    output:
        f"{R}/runs/{{run}}/{{shift}}/metrics.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/metrics.log",
    params:
        metrics={k: config["metrics"][k] for k in ("kernel", "centered", "spectrum_top")},
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
        f"{R}/logs/collect.log",
    localrule: True
    params:
        code=ntksmk.code_hash("ntkpipe.summary"),
    script:
        "../scripts/collect.py"
