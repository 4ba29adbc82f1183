rule figures:
    """The figures of the Reactivation study from the summary."""
    input:
        SUMMARY,
    output:
        FIGURES,
    log:
        f"{R}/logs/figures.log",
    localrule: True
    params:
        code=ntksmk.source_hash("figures"),
    script:
        "../scripts/figures.py"
