"""Adapter: rule report_page → ntkpipe.report.build."""
from pathlib import Path

from ntkpipe import report, smk
from ntkpipe.studies import load

log, provenance = smk.setup(snakemake)
studies = [load(spec) for spec in snakemake.params.studies]
figures_dir = Path(snakemake.output[0]).parent / "figures"
report.build(snakemake.input.scorecard,
             report.figure_entries(studies, snakemake.params.figures, figures_dir),
             snakemake.output[0], title=snakemake.params.title, provenance=provenance)
