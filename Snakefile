# ntkpipe: empirical NTK dynamics under task shifts. This file is a table of contents:
# the stages live in workflow/rules/, the science in src/ntkpipe/.

# config.yaml is the default; a config given with --configfile stands on its own (keys it
# leaves out take the schema's defaults) instead of merging into config.yaml's sweeps.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/ntk.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/studies.smk"


rule all:
    default_target: True
    input:
        summary=SUMMARY,
        figures=FIGURES,
        scorecard=f"{OUT}/scorecard.csv",
        report=f"{OUT}/report.html",
