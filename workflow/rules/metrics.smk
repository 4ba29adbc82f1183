rule metrics:
    """Norm, distance, velocity, alignment, reactivation measures, forgetting matrix."""
    input:
        f"{R}/runs/{{run}}/{{shift}}/ntk.nc",
    output:
        f"{R}/runs/{{run}}/{{shift}}/metrics.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/metrics.log",
    params:
        metrics=config["metrics"],
        code=ntksmk.source_hash("metrics", "stages", "store"),
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
        code=ntksmk.source_hash("summary", "store", "sweep"),
    script:
        "../scripts/collect.py"
