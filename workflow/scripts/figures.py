"""Adapter: rule figures → ntkpipe.figures.draw_all."""
from ntkpipe import figures, smk

log, provenance = smk.setup(snakemake)
figures.draw_all(snakemake.input[0], list(snakemake.output))
