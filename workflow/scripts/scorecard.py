"""Adapter: rule scorecard → ntkpipe.scorecard.combine."""
from ntkpipe import scorecard, smk

log, provenance = smk.setup(snakemake)
scorecard.combine(list(snakemake.input), snakemake.output.csv, provenance=provenance,
                  sidecar=snakemake.output.provenance)
