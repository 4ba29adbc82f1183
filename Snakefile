# ntkpipe: empirical NTK dynamics under task shifts. This file is a table of contents:
# the stages live in workflow/rules/, the science in src/ntkpipe/.

configfile: "config.yaml"

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/ntk.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        summary=SUMMARY,
        figures=FIGURES,
