"""Adapter: rule extract_ntk → ntkpipe.stages.extract_ntk."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.extract_ntk(snakemake.input.data, snakemake.input.split,
                   smk.snapshot_files(snakemake), snakemake.output[0],
                   run=snakemake.params.run, model_cfg=snakemake.params.model,
                   ntk_cfg=snakemake.params.ntk, provenance=provenance, log=log)
