# (study, sweep) each figure belongs to in `snakemake --report`.
FIGURE_REPORT = {
    "metrics_by_width": ("Reactivation", "width sweep"),
    "accuracy_by_task": ("Reactivation", "width sweep"),
    "similarity_sweep": ("Reactivation", "similarity sweep"),
    "frequency_shift": ("Reactivation", "frequency shift"),
    "learning_rate": ("Reactivation", "learning-rate sweep"),
    "task_sequence": ("Reactivation", "task sequence"),
    "edge_of_stability": ("Edge of stability", "learning-rate sweep"),
    "eos_alignment": ("Edge of stability", "learning-rate sweep"),
    "kernel_descent": ("Feature evolution", "depth sweep"),
    "alignment_by_depth": ("Feature evolution", "depth sweep"),
    "kernel_spectra": ("Feature evolution", "depth sweep"),
    "specialization": ("Feature evolution", "depth sweep"),
}


rule figures:
    """The figures of the studies whose sweeps are in the config, from the summary."""
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
        code=ntksmk.source_hash("figures", "summary", "sweep"),
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
        code=ntksmk.source_hash("scorecard", "summary", "sweep"),
    script:
        "../scripts/scorecard.py"
