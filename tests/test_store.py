"""Tests of ntkpipe.store: atomic writes, safe reads, provenance."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import ntkpipe
from ntkpipe import store
from ntkpipe.store import CorruptFileError


class Foreign:
    """An arbitrary class: pickling it stores a reference to code, which weights_only refuses."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---- atomic_path --------------------------------------------------------------------------

def test_atomic_path_writes_on_success_with_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        with store.atomic_path(tmp_path / "sub" / "out.txt") as tmp:
            assert tmp.parent == tmp_path / "sub"
            assert tmp.name != "out.txt"
            tmp.write_text("hello")
            assert not (tmp_path / "sub" / "out.txt").exists()  # not before the block ends
    finally:
        os.umask(old)
    final = tmp_path / "sub" / "out.txt"
    assert final.read_text() == "hello"
    assert stat.S_IMODE(final.stat().st_mode) == 0o640
    assert _listing(tmp_path / "sub") == ["out.txt"]


def test_atomic_path_other_umask(tmp_path):
    old = os.umask(0o002)
    try:
        with store.atomic_path(tmp_path / "f") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o664


def test_atomic_path_leaves_nothing_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with store.atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyError("boom")
    assert _listing(tmp_path) == []


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with store.atomic_path(target) as tmp:
            tmp.write_text("new but broken")
            raise RuntimeError
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["out.txt"]


# ---- torch files --------------------------------------------------------------------------

def test_save_load_torch_round_trip(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "names": ["a", "b"],
           "nested": {"x": torch.tensor([1, 2], dtype=torch.int64)}}
    store.save_torch(obj, tmp_path / "ckpt.pt")
    back = store.load_torch(tmp_path / "ckpt.pt")
    assert back.keys() == obj.keys()
    assert torch.equal(back["w"], obj["w"]) and back["w"].dtype == torch.float32
    assert back["step"] == 7 and back["names"] == ["a", "b"]
    assert torch.equal(back["nested"]["x"], obj["nested"]["x"])
    assert _listing(tmp_path) == ["ckpt.pt"]


def test_save_torch_failure_leaves_no_file(tmp_path):
    with pytest.raises(Exception):
        store.save_torch({"f": lambda: 0}, tmp_path / "bad.pt")  # lambdas cannot be pickled
    assert _listing(tmp_path) == []


def test_load_torch_truncated_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    store.save_torch({"w": torch.randn(50, 50)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="ckpt.pt") as err:
        store.load_torch(path)
    assert str(path) in str(err.value)
    assert "truncated or corrupted" in str(err.value)


def test_load_torch_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptFileError) as err:
        store.load_torch(path)
    assert str(path) in str(err.value)


def test_load_torch_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty.pt"):
        store.load_torch(tmp_path / "empty.pt")


def test_load_torch_missing_file(tmp_path):
    with pytest.raises(CorruptFileError, match="does not exist"):
        store.load_torch(tmp_path / "missing.pt")
    with pytest.raises(CorruptFileError, match="does not exist"):
        store.load_torch(tmp_path)  # a directory is not a checkpoint


def test_load_torch_refuses_pickled_code(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"obj": Foreign()}, path)
    # a plain (unsafe) load would succeed: the file is well formed
    assert torch.load(path, weights_only=False)["obj"].payload == [1, 2, 3]
    with pytest.raises(CorruptFileError, match="refused to load") as err:
        store.load_torch(path)
    assert str(path) in str(err.value)
    assert "Foreign" in str(err.value)  # the cause names the refused class
    assert "weights_only=False" not in str(err.value)  # never advise the unsafe load
    assert "add_safe_globals" not in str(err.value) and "\n" not in str(err.value)


def test_a_bad_intermediate_says_how_to_get_it_rebuilt(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptFileError, match="ntkpipe verify --repair"):
        store.load_torch(path)


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("NetCDF: HDF error"),  # a library's own wording, on a disk with no space
])
def test_a_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch, failure):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 1000))
    target = tmp_path / "out" / "metrics.nc"
    with pytest.raises(store.DiskFullError) as err:
        with store.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise failure
    message = str(err.value)
    assert f"no space left on the device writing {target}" in message and "\n" not in message
    assert _listing(tmp_path / "out") == []  # nothing half-written


def test_other_failures_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        with store.atomic_path(tmp_path / "x.nc"):
            raise ValueError("a bug")


# ---- NetCDF -------------------------------------------------------------------------------

def _dataset() -> xr.Dataset:
    return xr.Dataset(
        {"norm": (("probe", "step"), np.arange(6.0).reshape(2, 3), {"units": "1"}),
         "count": ("step", np.array([1, 2, 3], dtype=np.int64)),
         "scalar": ((), 4.5)},
        coords={"probe": [0, 1], "step": [0, 5, 17]},
        attrs={"title": "test", "config_json": json.dumps({"a": [1, 2]}),
               "note": "ünïcode ‖Θ‖₂"},
    )


def test_netcdf_round_trip(tmp_path):
    ds = _dataset()
    store.write_netcdf(ds, tmp_path / "m.nc")
    back = store.open_netcdf(tmp_path / "m.nc")
    xr.testing.assert_identical(back, ds)
    assert back["norm"].dims == ("probe", "step")
    assert back.attrs["note"] == "ünïcode ‖Θ‖₂"
    assert json.loads(back.attrs["config_json"]) == {"a": [1, 2]}
    assert back["count"].dtype == np.int64
    assert _listing(tmp_path) == ["m.nc"]


def test_open_netcdf_returns_loaded_data_after_the_file_goes(tmp_path):
    store.write_netcdf(_dataset(), tmp_path / "m.nc")
    back = store.open_netcdf(tmp_path / "m.nc")
    (tmp_path / "m.nc").unlink()
    np.testing.assert_array_equal(back["norm"].values, np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_open_netcdf_truncated(tmp_path, keep):
    path = tmp_path / "m.nc"
    store.write_netcdf(_dataset(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptFileError, match="not a readable NetCDF") as err:
        store.open_netcdf(path)
    assert str(path) in str(err.value)


def test_open_netcdf_missing(tmp_path):
    with pytest.raises(CorruptFileError, match="does not exist"):
        store.open_netcdf(tmp_path / "nope.nc")


# ---- provenance ---------------------------------------------------------------------------

def test_provenance_keys_types_and_values():
    prov = store.provenance(config={"b": 1, "a": Path("/x")}, wildcards={"run": "r", "shift": "s"},
                            seed=3, device="cpu")
    assert set(prov) == {"ntkpipe_version", "git_commit", "torch_version", "device", "seed",
                         "config_json", "wildcards_json"}
    assert all(isinstance(v, str) for v in prov.values())
    assert prov["ntkpipe_version"] == ntkpipe.__version__
    assert prov["torch_version"] == str(torch.__version__)
    assert prov["seed"] == "3" and prov["device"] == "cpu"
    assert json.loads(prov["config_json"]) == {"a": "/x", "b": 1}
    assert prov["config_json"].index('"a"') < prov["config_json"].index('"b"')  # sorted keys
    assert json.loads(prov["wildcards_json"]) == {"run": "r", "shift": "s"}
    assert prov["git_commit"]


def test_provenance_defaults_and_determinism():
    prov = store.provenance()
    assert prov["seed"] == "" and prov["config_json"] == "{}" and prov["wildcards_json"] == "{}"
    assert all(isinstance(v, str) for v in prov.values())
    kw = dict(config={"x": {"y": [1.5, "z"]}}, wildcards={"run": "a"}, seed=0, device="cuda")
    assert store.provenance(**kw) == store.provenance(**kw)


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert store.git_commit(tmp_path) == "unknown"


def test_dataset_attrs_are_netcdf_writable(tmp_path):
    attrs = store.dataset_attrs("my title", store.provenance(seed=1))
    assert attrs["Conventions"] == store.CONVENTIONS and attrs["title"] == "my title"
    assert all(isinstance(v, str) for v in attrs.values())
    ds = _dataset()
    ds.attrs = attrs
    store.write_netcdf(ds, tmp_path / "a.nc")
    assert store.open_netcdf(tmp_path / "a.nc").attrs == attrs
