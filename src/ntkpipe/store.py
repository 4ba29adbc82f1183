"""Files: atomic writes, safe reads that name a bad file, and provenance attributes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import ntkpipe
from ntkpipe.errors import InputError

CONVENTIONS = "CF-1.10"


class CorruptFileError(InputError, RuntimeError):
    """An input file is missing, truncated or not what it should be; the message names it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save, atomically."""
    import torch

    # A handle, not a name: torch names the zip's inner folder after a file name, and the
    # temporary name is random, so saving by name would make the bytes differ run to run.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def load_torch(path: str | Path) -> Any:
    """torch.load with weights_only=True; a truncated or foreign file raises CorruptFileError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: empty file (an interrupted write?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CorruptFileError(f"{path}: not a readable checkpoint (truncated or corrupted?): "
                               f"{_first_line(err)}") from None
    except Exception as err:  # weights_only refuses pickled code: name the file and the cause
        raise CorruptFileError(f"{path}: refused to load ({type(err).__name__}: "
                               f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """The informative line of an exception message (torch's weights_only errors bury it)."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def save_arrays(arrays: dict[str, Any], path: str | Path, *,
                meta: dict[str, Any] | None = None) -> None:
    """numpy arrays (and JSON metadata) into an .npz file, atomically; no pickles inside."""
    import numpy as np

    payload = {**arrays, _META: np.array(json.dumps(meta or {}, sort_keys=True))}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **payload)


def load_arrays(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, metadata) of an .npz written by `save_arrays`; CorruptFileError names a bad
    file."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: file does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop(_META))) if _META in arrays else {}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptFileError(f"{path}: not a readable array file (truncated or corrupted?): "
                               f"{_first_line(err)}") from None
    return arrays, meta


_META = "__meta_json__"


def write_netcdf(ds: Any, path: str | Path) -> None:
    """Write an xarray Dataset to NetCDF-4 atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")


def open_netcdf(path: str | Path) -> Any:
    """Load a NetCDF file fully into memory; CorruptFileError names a bad file."""
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: file does not exist")
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as err:
        raise CorruptFileError(f"{path}: not a readable NetCDF file (truncated or corrupted?): "
                               f"{err}") from None


def git_commit(directory: str | Path | None = None) -> str:
    """The commit of the checkout holding `directory` (with '-dirty' when modified), or 'unknown'."""
    cwd = Path(directory or Path(__file__).parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def provenance(*, config: dict | None = None, wildcards: dict | None = None,
               seed: int | None = None, device: str = "cpu",
               workflow_dir: str | Path | None = None) -> dict[str, str]:
    """String attributes saying where an output came from (no timestamps: outputs stay
    byte-identical across reruns)."""
    from importlib import metadata

    try:  # from the package metadata: importing torch costs seconds in jobs that skip it
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "ntkpipe_version": ntkpipe.__version__,
        "git_commit": git_commit(workflow_dir),
        "torch_version": torch_version,
        "device": device,
        "seed": "" if seed is None else str(seed),
        "config_json": json.dumps(config or {}, sort_keys=True, default=str),
        "wildcards_json": json.dumps(wildcards or {}, sort_keys=True, default=str),
    }


def dataset_attrs(title: str, prov: dict[str, str]) -> dict[str, str]:
    """Global attributes of every ntkpipe NetCDF file."""
    return {"Conventions": CONVENTIONS, "title": title,
            "source": f"ntkpipe {ntkpipe.__version__}",
            "history": f"written by ntkpipe {ntkpipe.__version__}", **prov}
