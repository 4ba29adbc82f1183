# (study, sweep) each figure belongs to in `snakemake --report`.
FIGURE_REPORT = {
    "metrics_by_width": ("Reactivation", "width sweep"),
    "accuracy_by_task": ("Reactivation", "width sweep"),
    "similarity_sweep": ("Reactivation", "similarity sweep"),
    "frequency_shift": ("Reactivation", "frequency shift"),
    "learning_rate": ("Reactivation", "learning-rate sweep"),
    "task_sequence": ("Reactivation", "task sequence"),
}


rule figures:
    """The figures of the Reactivation study from the summary."""
    input:
        SUMMARY,
    output:
        **{name: report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst",
                        category=FIGURE_REPORT[name][0], subcategory=FIGURE_REPORT[name][1])
           for name in FIGURE_NAMES},
    log:
        f"{R}/logs/figures.log",
    localrule: True
    params:
        code=ntksmk.source_hash("figures"),
    script:
        "../scripts/figures.py"


rule scorecard:
    """Each published claim checked on the summary (thresholds from config `scorecard`)."""
    input:
        SUMMARY,
    output:
        report(f"{R}/scorecard.csv", caption="../report/scorecard.rst", category="Scorecard"),
    log:
        f"{R}/logs/scorecard.log",
    localrule: True
    params:
        thresholds=config["scorecard"],
        code=ntksmk.source_hash("scorecard", "figures", "sweep"),
    script:
        "../scripts/scorecard.py"
