# (study, sweep) each figure belongs to in `snakemake --report`.
FIGURE_REPORT = {
    "metrics_by_width": ("Reactivation", "width sweep"),
    "accuracy_by_task": ("Reactivation", "width sweep"),
    "similarity_sweep": ("Reactivation", "similarity sweep"),
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
