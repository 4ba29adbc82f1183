"""Adapter: a study's figures rule → ntkpipe.stages.study_figures."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.study_figures(snakemake.params.study, snakemake.input.summary,
                     snakemake.input.get("measures"), list(snakemake.output),
                     provenance=provenance)
