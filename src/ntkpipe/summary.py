"""Combine per-run metrics into one dataset whose dimensions are the sweep parameters.

Runs are placed by index into arrays spanning the union of every coordinate (steps differ
between runs: phase 1 stops at convergence), so cells no run fills stay NaN. Building the
arrays directly keeps this linear in the number of runs, unlike repeated `xr.merge`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import store
from ntkpipe.sweep import PHASE1_KEYS, SHIFT_KEYS, SWEEP_KEYS

_PER_RUN_COORDS = ("phase", "epoch")  # differ between runs along the shared `step`


def run_parameters(ds: Any) -> dict[str, Any]:
    """The sweep parameters of a per-run file, from its wildcards provenance."""
    wildcards = json.loads(ds.attrs["wildcards_json"])
    from ntkpipe.sweep import parse_id

    return {**parse_id(wildcards["run"], PHASE1_KEYS), **parse_id(wildcards["shift"], SHIFT_KEYS)}


def _sorted_union(values: list[Any]) -> np.ndarray:
    if any(isinstance(v, str) for v in values):  # e.g. batch_size 64 and "full": all text
        values = [str(v) for v in values]
        return np.array(sorted(set(values)), dtype=object)
    return np.array(sorted(set(values)))


def combine(datasets: list[Any], *, provenance: dict[str, str]) -> Any:
    """One Dataset over (sweep parameters..., own dims) from per-run metric datasets."""
    import xarray as xr

    params = [run_parameters(ds) for ds in datasets]
    datasets = [ds.drop_vars([c for c in _PER_RUN_COORDS if c in ds.coords]) for ds in datasets]
    sweep_coords = {k: _sorted_union([p[k] for p in params]) for k in SWEEP_KEYS}
    own_dims = sorted({d for ds in datasets for d in ds.dims})
    own_coords = {d: _sorted_union([v.item() for ds in datasets if d in ds.coords
                                    for v in ds[d].values]) for d in own_dims}
    names = [n for n in datasets[0].data_vars]
    arrays: dict[str, np.ndarray] = {}
    var_dims: dict[str, tuple[str, ...]] = {}
    for name in names:
        dims = datasets[0][name].dims
        var_dims[name] = dims
        shape = [len(sweep_coords[k]) for k in SWEEP_KEYS] + [len(own_coords[d]) for d in dims]
        arrays[name] = np.full(shape, np.nan)
    lookup = {d: {v: i for i, v in enumerate(own_coords[d])} for d in own_dims}
    sweep_lookup = {k: {v: i for i, v in enumerate(sweep_coords[k])} for k in SWEEP_KEYS}
    for ds, p in zip(datasets, params):
        where = tuple(sweep_lookup[k][str(p[k]) if sweep_coords[k].dtype == object else p[k]]
                      for k in SWEEP_KEYS)
        for name in names:
            if name not in ds:
                continue
            if not var_dims[name]:
                arrays[name][where] = ds[name].values
                continue
            index = [np.array([lookup[d][v.item()] for v in ds[d].values], dtype=np.intp)
                     for d in var_dims[name]]
            arrays[name][where][np.ix_(*index)] = ds[name].values
    out = xr.Dataset(
        {name: ((*SWEEP_KEYS, *var_dims[name]), arrays[name], datasets[0][name].attrs)
         for name in names},
        coords={**sweep_coords, **own_coords},
    )
    c = out["classes_per_task"].values.astype(float)
    k = out["shared_classes"].values.astype(float)
    out = out.assign_coords(similarity=(("classes_per_task", "shared_classes"),
                                        k[None, :] / (2 * c[:, None] - k[None, :])))
    out["similarity"].attrs["long_name"] = "Jaccard similarity of task 1 and task 2 classes"
    out.attrs.update(store.dataset_attrs("ntkpipe sweep summary", provenance))
    out.attrs["runs"] = len(datasets)
    return out


def collect(metric_paths: list[str | Path], out: str | Path, *,
            provenance: dict[str, str]) -> None:
    """Read every run's metrics.nc and write the combined summary."""
    datasets = [store.open_netcdf(p) for p in metric_paths]
    if not datasets:
        raise ValueError("no metrics files to collect")
    summary = combine(datasets, provenance=provenance)
    encoding = {k: {"dtype": "str"} for k in SWEEP_KEYS if summary[k].dtype == object}
    with store.atomic_path(out) as tmp:
        summary.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
