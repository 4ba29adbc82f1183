"""Adapter: rule prepare_data → ntkpipe.stages.prepare_data."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.prepare_data(snakemake.wildcards.dataset, snakemake.params.root, snakemake.output[0],
                    provenance=provenance, download=snakemake.params.download,
                    image_size=snakemake.params.image_size,
                    custom=snakemake.params.custom)
