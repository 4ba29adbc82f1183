"""Adapter: rule sharpness → ntkpipe.stages.measure_sharpness."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
stages.measure_sharpness(snakemake.input.data, snakemake.input.split,
                         smk.snapshot_files(snakemake), snakemake.output[0],
                         run=snakemake.params.run, model_cfg=snakemake.params.model,
                         train_cfg=snakemake.params.train,
                         sharpness_cfg=snakemake.params.sharpness, provenance=provenance,
                         log=log)
