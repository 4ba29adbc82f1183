"""Adapter: rule study_measures → ntkpipe.stages.study_measures."""
from ntkpipe import smk, stages

log, provenance = smk.setup(snakemake)
files = {kind: {(run, shift): path for run, shift, path in rows}
         for kind, rows in snakemake.params.files.items()}
stages.study_measures(snakemake.params.study, snakemake.input.summary, files,
                      snakemake.output[0], settings=dict(snakemake.params.settings),
                      provenance=provenance)
