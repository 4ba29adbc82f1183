"""Combine per-run metrics into one dataset along `run`, and dense views of it over sweep keys.

The summary stacks runs: every variable has dims ("run", *its own dims) and every sweep key is a
coordinate along `run`, so its size grows with the number of runs, not with the product of the
sweeps. Own dims span the union of every run's coordinates (steps differ between runs: phase 1
stops at convergence) and cells a run does not fill stay NaN. Building the arrays directly keeps
this linear in the number of runs, unlike repeated `xr.merge`. `grid` unstacks a few sweep keys
into dimensions for a figure or a claim.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ntkpipe import store
from ntkpipe.sweep import PHASE1_KEYS, SHIFT_KEYS, SWEEP_KEYS

_PER_RUN_COORDS = ("phase", "epoch")  # differ between runs along the shared `step`
_RUN_COORDS = ("run_id", "shift_id", "similarity", "status", "status_reason")  # along `run`
_SIMILARITY_NAME = "Jaccard similarity of task 1 and task 2 classes"


def run_ids(ds: Any) -> tuple[str, str]:
    """(run id, shift id) of a per-run file, from its wildcards provenance."""
    wildcards = json.loads(ds.attrs["wildcards_json"])
    return wildcards["run"], wildcards["shift"]


def run_parameters(ds: Any) -> dict[str, Any]:
    """The sweep parameters of a per-run file, from its wildcards provenance."""
    from ntkpipe.sweep import parse_id

    run, shift = run_ids(ds)
    return {**parse_id(run, PHASE1_KEYS), **parse_id(shift, SHIFT_KEYS)}


def _column(values: list[Any]) -> np.ndarray:
    """Numbers stay numbers; any text (e.g. batch_size 64 and "full") makes the column text."""
    if any(isinstance(v, str) for v in values):
        return np.array([str(v) for v in values], dtype=object)
    return np.array(values)


def _sorted_union(values: Iterable[Any]) -> np.ndarray:
    return np.sort(_column(list(set(values))))


def _own_union(per_run: list[np.ndarray]) -> np.ndarray:
    """A dim's labels over all runs: numbers sorted; text in the order of the run holding the
    most of them when it holds all (`when` stays initial, final; layer '10' after '2'), else
    sorted."""
    values = [v.item() if hasattr(v, "item") else v for labels in per_run for v in labels]
    if not any(isinstance(v, str) for v in values):
        return _sorted_union(values)
    longest = [str(v) for v in max(per_run, key=len)]
    if set(longest) == {str(v) for v in values}:
        return _column(longest)
    return _sorted_union(values)


def _labels(ds: Any, dim: str) -> np.ndarray:
    """A dim's coordinate values; positions when it has no coordinate."""
    return ds[dim].values if dim in ds.coords else np.arange(ds.sizes[dim])


def similarity(classes_per_task: Any, shared_classes: Any) -> Any:
    """Jaccard similarity k / (2c − k) of two tasks of c classes sharing k."""
    k = shared_classes.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return k / (2 * classes_per_task.astype(float) - k)


def combine(datasets: list[Any], *, provenance: dict[str, str]) -> Any:
    """One Dataset along `run` from per-run metric datasets.

    Runs are sorted by (run id, shift id). Coordinates along `run`: every key of SWEEP_KEYS,
    `similarity`, `run_id`, `shift_id`. Each variable of any run has dims ("run", *its dims in
    the first run that has it*); own dims span the sorted union of the runs' coordinates.
    """
    import xarray as xr

    ids = [run_ids(ds) for ds in datasets]
    if len(set(ids)) < len(ids):
        raise ValueError("two metrics files name the same run and shift")
    order = sorted(range(len(datasets)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    params = [run_parameters(datasets[i]) for i in order]
    datasets = [datasets[i].drop_vars([c for c in _PER_RUN_COORDS if c in datasets[i].coords])
                for i in order]

    arrays, first, own_coords, labelled = _stack(datasets, range(len(datasets)),
                                                 len(datasets))

    sweep_coords = {k: _column([p[k] for p in params]) for k in SWEEP_KEYS}
    out = xr.Dataset(
        {name: (("run", *da.dims), arrays[name], da.attrs) for name, da in first.items()},
        coords={**{k: ("run", v) for k, v in sweep_coords.items()},
                "similarity": ("run", similarity(sweep_coords["classes_per_task"],
                                                 sweep_coords["shared_classes"])),
                "run_id": ("run", _column([r for r, _ in ids])),
                "shift_id": ("run", _column([s for _, s in ids])),
                **{d: own_coords[d] for d in labelled}},
    )
    for d in labelled:
        out[d].attrs.update(next(ds[d].attrs for ds in datasets if d in ds.coords))
    out["similarity"].attrs["long_name"] = _SIMILARITY_NAME
    if "run_status" in out:  # ntkpipe.status: ok, diverged, failed_to_learn, and why
        from ntkpipe.status import names

        out = out.assign_coords(
            status=("run", names(out["run_status"].values),
                    {"long_name": "run status (ok, diverged, failed_to_learn)"}),
            status_reason=("run", _column([ds["run_status"].attrs.get("reason", "")
                                           if "run_status" in ds else "" for ds in datasets]),
                           {"long_name": "why a run is not ok"}))
    out.attrs.update(store.dataset_attrs("ntkpipe sweep summary", provenance))
    out.attrs["runs"] = len(datasets)
    return out


def _stack(datasets: list[Any], rows: Iterable[int], n_runs: int,
           known: dict[str, np.ndarray] | None = None
           ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray], list[str]]:
    """Arrays (run, *own dims) of the datasets' variables, each dataset at its row; own dims
    span `known` coordinates where given, else the sorted union of the datasets'. Returns the
    arrays, each variable's first DataArray (dims, attrs), the own coordinates and the dims
    that carry labels."""
    known = known or {}
    first: dict[str, Any] = {}  # a variable's dims and attrs come from the first run with it
    for ds in datasets:
        for name in ds.data_vars:
            first.setdefault(name, ds[name])
    own_dims = sorted({d for ds in datasets for d in ds.dims})
    own_coords = {d: known[d] if d in known else
                  _own_union([_labels(ds, d) for ds in datasets if d in ds.dims])
                  for d in own_dims}
    labelled = [d for d in own_dims if d in known or any(d in ds.coords for ds in datasets)]
    lookup = {d: {v: i for i, v in enumerate(own_coords[d])} for d in own_dims}
    arrays = {name: np.full((n_runs, *(len(own_coords[d]) for d in da.dims)), np.nan)
              for name, da in first.items()}
    for row, ds in zip(rows, datasets):
        for name in ds.data_vars:
            dims = first[name].dims
            try:
                cells = np.ix_(*[np.array([lookup[d][v.item()] for v in _labels(ds, d)],
                                          dtype=np.intp) for d in dims])
            except KeyError as err:
                raise ValueError(f"{name}: label {err} is not in the summary's coordinates") \
                    from None
            arrays[name][(row, *cells)] = ds[name].transpose(*dims).values
    return arrays, first, own_coords, labelled


def along_runs(summary: Any, per_run: dict[int, Any]) -> Any:
    """Per-run datasets, keyed by their position along the summary's `run`, stacked along it:
    dims ("run", *their own), NaN for runs without one; an own dim the summary has (`step`,
    `probe`) takes the summary's coordinate, so the result merges with it cell for cell."""
    import xarray as xr

    rows = sorted(per_run)
    datasets = [per_run[r] for r in rows]
    known = {d: summary[d].values for d in summary.dims if d in summary.coords and d != "run"}
    arrays, first, own_coords, labelled = _stack(datasets, rows, summary.sizes["run"], known)
    return xr.Dataset({name: (("run", *da.dims), arrays[name], da.attrs)
                       for name, da in first.items()},
                      coords={d: own_coords[d] for d in labelled})


def with_measures(summary: Any, measures: Any | None) -> Any:
    """The summary with a study's measures (a Dataset along the same `run`) merged in."""
    if measures is None:
        return summary
    if measures.sizes.get("run", summary.sizes["run"]) != summary.sizes["run"]:
        raise ValueError(f"the study measures have {measures.sizes['run']} runs, the summary "
                         f"{summary.sizes['run']}; rebuild them")
    for key in ("run_id", "shift_id"):
        if key in measures.coords and not np.array_equal(measures[key].values,
                                                         summary[key].values):
            raise ValueError("the study measures are of other runs than the summary; "
                             "rebuild them")
    measures = measures.drop_vars([k for k in ("run_id", "shift_id") if k in measures.coords])
    out = summary.merge(measures, join="left", compat="override")
    # a study's own settings (its attributes the summary lacks) travel with its measures
    out.attrs.update({k: v for k, v in measures.attrs.items() if k not in summary.attrs})
    return out


def _matches(column: np.ndarray, value: Any) -> np.ndarray:
    """column == value along `run`, text columns compared as text."""
    if column.dtype.kind in "OU":  # object in memory, fixed-width unicode once read back
        return column == str(value)
    if isinstance(value, str):
        return np.zeros(len(column), dtype=bool)
    return column == value


def grid(ds: Any, keep: Iterable[str], *, count: str = "spectral_norm", **fixed: Any) -> Any:
    """The dense view of a run-stacked summary over the sweep keys in `keep`.

    Runs are filtered to the `fixed` values (keys the summary lacks are ignored; own dims such
    as `probe` are selected). Every other sweep key with several values left is fixed, in
    SWEEP_KEYS order, to the value whose runs hold the most finite `count` values (a sweep
    varies few parameters; the rest sit at one value) — but `strategy`, unless kept or fixed,
    to finetune: plain training, what the published claims are about. Returns dims (kept sweep keys in
    SWEEP_KEYS order, *own dims), coordinates the values the selected runs take; the other
    sweep keys are scalar coordinates and `similarity` spans classes_per_task × shared_classes
    (as far as they are dims). Cells no selected run fills are NaN.
    """
    keep = {keep} if isinstance(keep, str) else set(keep)
    fixed_own = {k: v for k, v in fixed.items() if k in ds.dims and k != "run"}
    fixed = {k: v for k, v in fixed.items() if k in SWEEP_KEYS and k in ds.coords}
    if "strategy" in ds.coords and "strategy" not in keep | set(fixed) \
            and "finetune" in set(ds["strategy"].values):
        fixed["strategy"] = "finetune"  # plain training, unless the caller asks otherwise
    runs = np.ones(ds.sizes["run"], dtype=bool)
    for key, value in fixed.items():
        runs &= _matches(ds[key].values, value)
    finite = np.isfinite(ds[count]).sum([d for d in ds[count].dims if d != "run"]).values
    for key in SWEEP_KEYS:
        if key in keep or key in fixed or key not in ds.coords:
            continue
        column = ds[key].values
        values = np.unique(column[runs])
        if len(values) > 1:
            totals = [finite[runs & (column == v)].sum() for v in values]
            runs &= column == values[int(np.argmax(totals))]

    dims = [k for k in SWEEP_KEYS if k in keep and k not in fixed and k in ds.coords]
    sub = ds.isel(run=np.flatnonzero(runs)).sel(fixed_own)
    scalars = {k: (sub[k].values[0] if sub.sizes["run"] else fixed.get(k))
               for k in SWEEP_KEYS if k in ds.coords and k not in dims}
    sub = sub.drop_vars([*scalars, *(c for c in _RUN_COORDS if c in sub.coords)])
    if len(dims) > 1:
        sub = sub.set_index(run=dims).unstack("run")
    elif dims:
        sub = sub.swap_dims(run=dims[0]).sortby(dims[0])
    elif sub.sizes["run"] == 1:
        sub = sub.squeeze("run")
    else:
        raise ValueError(f"{sub.sizes['run']} runs match {fixed}; keep a sweep key to see them")
    sub = sub.assign_coords({k: v for k, v in scalars.items() if v is not None})
    if "classes_per_task" in sub.coords and "shared_classes" in sub.coords:
        sim = similarity(sub["classes_per_task"], sub["shared_classes"])
        sim = sim.transpose(*[d for d in ("classes_per_task", "shared_classes") if d in sim.dims])
        sub = sub.assign_coords(similarity=sim)
        sub["similarity"].attrs["long_name"] = _SIMILARITY_NAME
    return sub.transpose(*dims, ...)


def open_results(results: str | Path = "results") -> Any:
    """The summary of a results directory (`summary/metrics.nc`) with every study's measures
    (`summary/<study>.nc`) merged in: one Dataset along `run` holding all a run measured."""
    base = Path(results) / "summary"
    ds = store.open_netcdf(base / "metrics.nc")
    for path in sorted(base.glob("*.nc")):
        if path.name != "metrics.nc":
            ds = with_measures(ds, store.open_netcdf(path))
    return ds


def collect(metric_paths: list[str | Path], out: str | Path, *,
            provenance: dict[str, str], sweeps: dict[str, str] | None = None,
            config: dict[str, Any] | None = None) -> None:
    """Read every run's metrics.nc and write the combined summary (with a `sweep` coordinate
    from `sweeps`, 'run id/shift id' → comma-separated sweep names, and the workflow's whole
    validated config as the attribute `workflow_config_json`, where given)."""
    datasets = [store.open_netcdf(p) for p in metric_paths]
    if not datasets:
        raise ValueError("no metrics files to collect")
    summary = combine(datasets, provenance=provenance)
    if sweeps is not None:
        keys = [f"{r}/{s}" for r, s in zip(summary["run_id"].values, summary["shift_id"].values)]
        summary = summary.assign_coords(sweep=("run", np.array([sweeps.get(k, "") for k in keys],
                                                               dtype=object)))
        summary["sweep"].attrs["long_name"] = "the sweeps holding the run (comma-separated)"
    if config is not None:
        summary.attrs["workflow_config_json"] = json.dumps(config, sort_keys=True, default=str)
    encoding = {k: {"dtype": "str"} for k in summary.variables if summary[k].dtype == object}
    with store.atomic_path(out) as tmp:
        summary.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
