"""Adapter: rule scorecard → ntkpipe.scorecard.scorecard."""
from ntkpipe import scorecard, smk

log, provenance = smk.setup(snakemake)
scorecard.scorecard(snakemake.input[0], snakemake.output[0], dict(snakemake.params.thresholds))
