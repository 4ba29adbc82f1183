"""Adapter: rule collect → ntkpipe.summary.collect."""
from ntkpipe import smk, summary

log, provenance = smk.setup(snakemake)
summary.collect(list(snakemake.input), snakemake.output[0], provenance=provenance,
                sweeps=snakemake.params.sweeps, config=dict(snakemake.config))
log(f"combined {len(snakemake.input)} runs")
