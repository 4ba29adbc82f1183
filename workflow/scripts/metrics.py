"""Adapter: rule metrics → ntkpipe.stages.compute_metrics."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.compute_metrics(snakemake.input.ntk, snakemake.output[0],
                       metrics_cfg=snakemake.params.metrics, provenance=provenance)
