"""Adapter: rule train_phase1 → ntkpipe.stages.train_phase1."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.train_phase1(snakemake.input.data, snakemake.input.split, snakemake.output.checkpoint,
                    snakemake.output.snapshots, run=snakemake.params.run,
                    train_cfg=snakemake.params.train, model_cfg=snakemake.params.model,
                    provenance=provenance, log=log)
