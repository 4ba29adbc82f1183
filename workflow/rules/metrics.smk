def metric_inputs(wildcards):
    """ntk.nc, and the outputs of the analyses the run's sweeps turn on."""
    inputs = {"ntk": f"{R}/runs/{wildcards.run}/{wildcards.shift}/ntk.nc"}
    analyses = analyses_of(wildcards)
    if "sharpness" in analyses:
        inputs["sharpness"] = f"{R}/runs/{wildcards.run}/{wildcards.shift}/sharpness.nc"
    if "train_kernel" in analyses:
        inputs["train_kernel"] = f"{R}/runs/{wildcards.run}/train_kernel.nc"
    return inputs


rule metrics:
    """Norm, distance, velocity, alignment, reactivation measures, forgetting matrix."""
    input:
        unpack(metric_inputs),
    output:
        f"{R}/runs/{{run}}/{{shift}}/metrics.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/metrics.log",
    params:
        metrics=config["metrics"],
        train_kernel=lambda wc: (config["analysis"]["train_kernel"]
                                 if "train_kernel" in analyses_of(wc) else None),
        code=ntksmk.source_hash("kgd", "metrics", "specialization", "spectra",
                                "stages/measures", "store"),
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
