"""Adapter: rules split_task1 / split_tasks → ntkpipe.stages.make_split."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
tasks = stages.make_split(snakemake.input.data, snakemake.output[0],
                          split={**snakemake.params.split, "probe_tasks": tuple(snakemake.params.split["probe_tasks"])},
                          provenance=provenance)
log(f"classes per task {tasks.classes}; training samples {[len(t) for t in tasks.train]}")
