"""Files: atomic writes, safe reads that name a bad file, and provenance attributes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
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


class DiskFullError(InputError, OSError):
    """No space left (or quota exceeded) while writing an output; the message names it."""


# what a stage reading a bad intermediate tells the user to do
REPAIR = ("; `ntkpipe verify --repair` removes it (and any other bad output) and the next run "
          "rebuilds it")


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
    except Exception as err:
        if _disk_full(err, path.parent):
            raise DiskFullError(f"no space left on the device writing {path} "
                                f"({_free(path.parent)} free): free space there or set "
                                "'results' to a larger disk") from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _disk_full(err: BaseException, where: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT anywhere in its chain, or a
    library's own error (netCDF's HDF error, torch's "file write failed") on a full disk."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(where).free < 1 << 20
    except OSError:
        return False


def _free(where: Path) -> str:
    try:
        return f"{shutil.disk_usage(where).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown space"


def write_json(value: Any, path: str | Path, indent: int | None = None) -> None:
    """`value` as JSON with sorted keys (a trailing newline when indented), atomically."""
    text = json.dumps(value, sort_keys=True, indent=indent) + ("\n" if indent else "")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


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
                               f"{_first_line(err)}{REPAIR}") from None
    except Exception as err:  # weights_only refuses pickled code: name the file and the cause
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if blocked:
            raise CorruptFileError(
                f"{path}: refused to load: it holds the Python object {blocked.group(1)}, and "
                "ntkpipe loads checkpoints with weights_only=True (tensors and plain "
                "containers only; ntkpipe never writes anything else). If the file is not "
                "ntkpipe's, move it away and rerun") from None
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
                               f"{_first_line(err)}{REPAIR}") from None
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
        cause = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
        raise CorruptFileError(f"{path}: not a readable NetCDF file (truncated or corrupted?): "
                               f"{cause}{REPAIR}") from None


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
