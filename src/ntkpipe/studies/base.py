"""What a study contributes to the pipeline: its measures, its claim checks, its figures.

A study is one module holding one `Study` named `STUDY`. The pipeline runs, per study:

1. `measures(summary, files, settings)` (optional): per-run quantities derived from the
   summary and from per-run files (kernels, sharpness, ...), as a Dataset along `run` — the
   summary's runs, in the summary's order. Written to `summary/<name>.nc`.
2. `claims(ds, thresholds)`: the scorecard rows, on the summary merged with those measures
   (runs that are not ok dropped first: `ntkpipe.status`). Written to `scorecard/<name>.csv`.
3. every `Figure` whose `applies` says the config has its runs, drawn from the same merged
   dataset into `figures/<figure>.png`, with its caption in `snakemake --report`.

Each step is a job whose code hash covers the study's module (and the ntkpipe modules it
imports), so editing one study reruns that study's measures, rows and figures only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# (sweep points of the active runs, the analyses they turn on) → does the figure apply?
Applies = Callable[[list[dict[str, Any]], set[str]], bool]


@dataclass(frozen=True)
class Figure:
    """One figure: its file name, how to draw it, and its caption in the report."""

    name: str
    draw: Callable[[Any, Path], None]  # (merged summary, output path)
    caption: str  # a reStructuredText file, relative to the study's module
    group: str  # report subcategory: the sweep the figure shows
    applies: Applies


@dataclass(frozen=True)
class Threshold:
    """A scorecard threshold: its default (fixed from the claim's wording) and its meaning."""

    default: float
    description: str


@dataclass(frozen=True)
class Study:
    """One published study (or the user's own), as the pipeline runs it."""

    name: str  # an identifier: it names files and the scorecard's `study` column
    title: str  # the report's category
    claims: Callable[[Any, dict[str, float]], list[Any]]  # (merged summary, thresholds) → Rows
    figures: tuple[Figure, ...] = ()
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    measures: Callable[[Any, dict[str, dict[str, str]], dict[str, Any]], Any] | None = None
    # Per-run files `measures` reads: {file kind: the analysis whose runs have it (None: all
    # runs)}; kinds are "metrics", "ntk", "sharpness" and "train_kernel".
    run_files: dict[str, str | None] = field(default_factory=dict)
    settings: Callable[[dict[str, Any]], dict[str, Any]] = lambda config: {}
    headline: Callable[[Any], dict[str, float]] | None = None  # one run's numbers (`show`)
    source: str = ""  # the module's file, set by the registry

    def caption_path(self, figure: Figure) -> str:
        """Absolute path of a figure's caption file."""
        return str(Path(self.source).parent / figure.caption)

    def applicable(self, points: list[dict[str, Any]], analyses: set[str]) -> list[str]:
        """Names of the figures the given runs can fill."""
        return [f.name for f in self.figures if points and f.applies(points, analyses)]

    def figure(self, name: str) -> Figure:
        """The figure called `name`."""
        for figure in self.figures:
            if figure.name == name:
                return figure
        raise KeyError(f"study {self.name!r} has no figure {name!r}; it has: "
                       + ", ".join(f.name for f in self.figures))
