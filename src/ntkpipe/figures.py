"""Plotting helpers the studies' figures share, and the figures job.

A study's figures live in its module (`ntkpipe.studies.*`); each draws from the summary merged
with the study's measures, through the dense `grid` views of `ntkpipe.summary`. This module
knows no study.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def has_data(da: Any) -> bool:
    """Whether `da` holds any finite value."""
    return bool(np.isfinite(da.values).any())


def relative_curves(ds: Any, variable: str, probe: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) per seed of `variable` against steps since the first boundary, on the union of
    their step grids (NaN where a seed has no snapshot)."""
    series = []
    for seed in ds["seed"].values:
        one = ds.sel(seed=seed)
        da = one[variable].sel(probe=probe) if "probe" in one[variable].dims else one[variable]
        ok = np.isfinite(da.values)
        if not ok.any():
            continue
        boundary = float(one["boundary_step"].sel(boundary=1)) if "boundary" in one.dims else 0.0
        series.append((one["step"].values[ok] - boundary, da.values[ok]))
    return union_table(series)


def union_table(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(x, table) of several (x, y) series on the union of their x (NaN where one has no point)."""
    if not series:
        return np.array([]), np.empty((0, 0))
    grid = np.unique(np.concatenate([s[0] for s in series]))
    table = np.full((len(series), len(grid)), np.nan)
    for i, (x, y) in enumerate(series):
        table[i, np.searchsorted(grid, x)] = y
    return grid, table


def status_note(ds: Any) -> str:
    """' (k diverged, m failed to learn)' when runs in `ds` are not ok (ntkpipe.status):
    diverged runs plot up to their divergence; every such run is left out of the scorecard."""
    from ntkpipe.status import DIVERGED, FAILED, codes as status_codes

    codes = status_codes(ds)
    codes = np.zeros(0) if codes is None else codes
    diverged, failed = int((codes == DIVERGED).sum()), int((codes == FAILED).sum())
    parts = [f"{diverged} diverged"] * bool(diverged) + [f"{failed} failed to learn"] * bool(failed)
    return f" ({', '.join(parts)})" if parts else ""


def colors(cmap: Any, top: float, palette: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Colours of `values` spread over every value in the summary: stable across figures."""
    return cmap(np.linspace(0, top, len(palette)))[np.searchsorted(palette, values)]


def band(ax: Any, x: np.ndarray, table: np.ndarray, label: str | None, color: Any,
          ls: str = "-") -> None:
    """Mean over rows (seeds) as a line, their min–max as a shaded band."""
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = (np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0))
    ok = np.isfinite(mean)
    ax.plot(x[ok], mean[ok], color=color, label=label, lw=1.4, ls=ls)
    if len(table) > 1:
        ax.fill_between(x[ok], low[ok], high[ok], color=color, alpha=0.2, lw=0)


def boundary_axis(ax: Any) -> None:
    """A symlog x-axis of steps since the task boundary, the boundary dashed."""
    ax.set_xscale("symlog", linthresh=10)
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("steps since task boundary")


# high enough that a figure fitted to half a screen keeps readable tick labels
DPI = 160


def finish(fig: Any, title: str, path: str | Path) -> None:
    """Title, tight layout, save and close."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)


def study_runs(ds: Any, variable: str, figure: str) -> Any:
    """The runs holding finite values of `variable`: the runs of the study that measures it."""
    if variable in ds:
        da = ds[variable]
        finite = np.isfinite(da)
        others = [d for d in da.dims if d != "run"]
        runs = np.flatnonzero((finite.any(others) if others else finite).values)
        if len(runs):
            return ds.isel(run=runs)
    raise ValueError(f"no runs with {variable!r} for the {figure} figure; is its sweep "
                     "(and its analysis) in the config?")


def seed_table(da: Any, dim: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, seeds × x) of a series over seeds along `dim`, positions no seed fills dropped."""
    da = da.transpose("seed", dim) if "seed" in da.dims else da.expand_dims("seed")
    keep = np.isfinite(da.values).any(0)
    return da[dim].values[keep], da.values[:, keep]


def last_snapshot(da: Any, dim: str = "step") -> Any:
    """`da` at its last `dim` position holding a finite value (the run's final snapshot)."""
    finite = np.isfinite(da)
    others = [d for d in da.dims if d != dim]
    ok = np.flatnonzero((finite.any(others) if others else finite).values)
    return da.isel({dim: int(ok[-1]) if len(ok) else -1})


def per_seed(cell: Any, pick: Any) -> list[Any]:
    """`pick(one seed's cell)` for each seed of a grid cell."""
    return [pick(cell.sel(seed=s)) for s in cell["seed"].values] if "seed" in cell.dims \
        else [pick(cell)]


def nanmean(table: np.ndarray) -> np.ndarray:
    """Mean over the first axis (seeds), NaN where no seed has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table, 0)


def mean_sd(values: list[Any]) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (NaN, NaN when none)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return (float(finite.mean()), float(finite.std())) if len(finite) else (np.nan, np.nan)


def with_data(ds: Any, key: str, variable: str) -> list[Any]:
    """The values of grid dim `key` whose runs hold `variable`; linear activations last."""
    values = [v for v in ds[key].values if has_data(ds[variable].sel({key: v}))]
    return sorted(values, key=lambda v: str(v) == "linear")


def style_legend(ax: Any, styles: dict[str, str], lines: bool = True, **kw: Any) -> None:
    """A legend of one black line per line style, after the labelled lines on `ax` if `lines`."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels() if lines else ([], [])
    handles += [Line2D([], [], color="k", ls=ls, lw=1.2) for ls in styles.values()]
    ax.legend(handles, labels + list(styles), fontsize=7, **kw)


def draw(study: Any, ds: Any, outputs: list[str | Path],
         provenance: dict[str, str] | None = None) -> None:
    """Draw each requested figure of `study` (its file name names it) atomically from `ds`,
    the summary merged with the study's measures, with `provenance` in its PNG text chunks."""
    from ntkpipe import store

    names = [f.name for f in study.figures]
    unknown = [Path(out).stem for out in outputs if Path(out).stem not in names]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r} of study {study.name!r}; known: "
                         + ", ".join(names))
    for out in outputs:
        figure = study.figure(Path(out).stem)
        with store.atomic_path(out) as tmp:
            png = tmp.with_suffix(".png")
            figure.draw(ds, png)
            if provenance:
                stamp_png(png, {**provenance, "figure": figure.name, "study": study.name})
            png.replace(tmp)


def stamp_png(path: str | Path, provenance: dict[str, str]) -> None:
    """Rewrite a PNG with `provenance` as iTXt chunks named `ntkpipe:<key>` (pixels kept)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in sorted(provenance.items()):
        info.add_itxt(f"ntkpipe:{key}", str(value))
    with Image.open(path) as image:
        image.load()
    image.save(path, format="PNG", pnginfo=info)


def png_provenance(path: str | Path) -> dict[str, str]:
    """The `ntkpipe:` text chunks of a PNG drawn by `draw`."""
    from PIL import Image

    with Image.open(path) as image:
        return {k.split(":", 1)[1]: v for k, v in image.text.items() if k.startswith("ntkpipe:")}
