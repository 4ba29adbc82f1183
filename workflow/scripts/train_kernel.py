"""Adapter: rule train_kernel → ntkpipe.stages.train_kernel."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.train_kernel(snakemake.input.data, snakemake.input.split, snakemake.input.phase1,
                    snakemake.output[0], run=snakemake.params.run,
                    model_cfg=snakemake.params.model, train_cfg=snakemake.params.train,
                    ntk_cfg=snakemake.params.ntk, settings=snakemake.params.settings,
                    provenance=provenance, log=log)
