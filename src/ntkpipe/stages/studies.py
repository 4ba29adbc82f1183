"""The study stages: a study's measures along `run`, its scorecard rows and its figures, each
from the summary (see `ntkpipe.studies.base` for what a study provides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ntkpipe import store


def merged(summary_path: str | Path, measures_path: str | Path | None) -> Any:
    """The summary with a study's measures merged in (None: the summary alone)."""
    from ntkpipe.summary import with_measures

    summary = store.open_netcdf(summary_path)
    return with_measures(summary, store.open_netcdf(measures_path) if measures_path else None)


def study_measures(spec: str, summary_path: str | Path, files: dict[str, dict[str, str]],
                   out: str | Path, *, settings: dict[str, Any],
                   provenance: dict[str, str]) -> None:
    """A study's measures of every run of the summary, into `summary/<study>.nc`. `files` maps
    each per-run file kind the study reads to {(run id, shift id): path}."""
    from ntkpipe.studies import load

    study = load(spec)
    summary = store.open_netcdf(summary_path)
    ds = study.measures(summary, files, settings)
    ds = ds.assign_coords(run_id=("run", summary["run_id"].values),
                          shift_id=("run", summary["shift_id"].values))
    ds.attrs.update(store.dataset_attrs(f"ntkpipe measures of the {study.name} study",
                                        provenance))
    ds.attrs["study"] = study.name
    encoding = {k: {"dtype": "str"} for k in ds.variables if ds[k].dtype == object}
    with store.atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)


def study_scorecard(spec: str, summary_path: str | Path, measures_path: str | Path | None,
                    out: str | Path, *, thresholds: dict[str, float]) -> None:
    """A study's scorecard rows, into `scorecard/<study>.csv`."""
    from ntkpipe import scorecard
    from ntkpipe.studies import load

    study = load(spec)
    scorecard.write(scorecard.evaluate(study, merged(summary_path, measures_path), thresholds),
                    out)


def study_figures(spec: str, summary_path: str | Path, measures_path: str | Path | None,
                  outputs: list[str | Path], provenance: dict[str, str] | None = None) -> None:
    """A study's figures named by `outputs` (their file names), `provenance` in each PNG."""
    from ntkpipe import figures
    from ntkpipe.studies import load

    figures.draw(load(spec), merged(summary_path, measures_path), outputs, provenance)
