"""Adapter: rule train_phase2 → ntkpipe.stages.train_phase2."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.train_phase2(snakemake.input.data, snakemake.input.split, snakemake.input.checkpoint,
                    snakemake.output.checkpoint, snakemake.output.snapshots,
                    run=snakemake.params.run, train_cfg=snakemake.params.train,
                    model_cfg=snakemake.params.model, provenance=provenance, log=log)
