"""Adapter: rule study_scorecard → ntkpipe.stages.study_scorecard."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.study_scorecard(snakemake.params.study, snakemake.input.summary,
                       snakemake.input.get("measures"), snakemake.output[0],
                       thresholds=dict(snakemake.params.thresholds))
