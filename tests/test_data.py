"""Dataset loaders, checked against tiny files written in the real on-disk formats (no network)."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ntkpipe.data import DATASETS, DatasetError, dataset_info, load_dataset, normalise


# --------------------------------------------------------------------------- writers

def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes (magic 0x0000080N), gzipped when the name ends in .gz."""
    data = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def py2_pickle(obj) -> bytes:
    """Bytes as Python 2's cPickle (protocol 2) wrote the official CIFAR files."""
    if isinstance(obj, dict):
        return b"}(" + b"".join(py2_pickle(k) + py2_pickle(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(py2_pickle(v) for v in obj) + b"e"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, bytes):  # a Python 2 str
        return b"T" + struct.pack("<I", len(obj)) + obj
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8
    shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in obj.shape) + b"t"
    dtype = (b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
             b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
            b"(K\x01" + shape + dtype + b"\x89" + py2_pickle(obj.tobytes()) + b"tb")


def write_pickle(path: Path, obj, py2: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02" + py2_pickle(obj) + b"." if py2 else pickle.dumps(obj))
    return path


CIFAR = {  # folder, train files, test files, label key, classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
PER_FILE = 3


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Rows in the official layout; image k has one lit green pixel at (k, 2k)."""
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for k in range(n):
        data[k, 1, k, 2 * k] = 255
    labels = [(seed * 7 + k) % 10 for k in range(n)]
    return data.reshape(n, 3072), labels


def write_cifar(root: Path, name: str, py2: bool) -> Path:
    folder, train_files, test_files, key, _ = CIFAR[name]
    base = root / folder
    for i, file in enumerate(train_files + test_files):
        data, labels = cifar_images(PER_FILE, seed=i)
        batch = {b"batch_label": file.encode(), key: labels, b"data": data,
                 b"filenames": [f"img_{i}_{k}.png".encode() for k in range(PER_FILE)]}
        if name == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        write_pickle(base / file, batch, py2)
    meta = {"cifar10": ("batches.meta", b"label_names", 10),
            "cifar100": ("meta", b"fine_label_names", 100)}[name]
    write_pickle(base / meta[0], {meta[1]: [b"class%d" % i for i in range(meta[2])]}, py2)
    return base


def write_png(path: Path, pixels: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)


IMAGE_CLASSES = ["zebra", "apple", "mango"]  # deliberately not sorted


def write_imagefolder(root: Path, with_list: bool = True) -> Path:
    """Per split and class: a PNG whose channel `label` is lit at (label, label + 1)."""
    for split, copies in (("train", 2), ("val", 1)):
        for label, cls in enumerate(IMAGE_CLASSES):
            for i in range(copies):
                pixels = np.zeros((8, 8, 3), dtype=np.uint8)
                pixels[label, label + 1, label] = 255
                write_png(root / split / cls / f"{i}.png", pixels)
    write_png(root / "train" / "unlisted" / "0.png", np.zeros((8, 8, 3), dtype=np.uint8))
    if with_list:
        (root / "classes.txt").write_text("\n".join(IMAGE_CLASSES) + "\n")
    return root


# --------------------------------------------------------------------------- generic

@pytest.mark.parametrize("call", [lambda: load_dataset("svhn"), lambda: dataset_info("svhn")])
def test_unknown_name_lists_datasets(call):
    with pytest.raises(ValueError, match="cifar100"):
        call()


@pytest.mark.parametrize("name,classes,shape", [
    ("digits", 10, (1, 8, 8)), ("mnist", 10, (1, 28, 28)), ("cifar10", 10, (3, 32, 32)),
    ("cifar100", 100, (3, 32, 32)), ("imagefolder", 100, (3, 64, 64))])
def test_dataset_info(name, classes, shape):
    info = dataset_info(name)
    assert (info["num_classes"], info["input_shape"]) == (classes, shape)
    assert info["url"].startswith(("http://", "https://"))
    assert set(DATASETS) == {"digits", "mnist", "cifar10", "cifar100", "imagefolder"}


def test_dataset_info_image_size_and_bad_options():
    assert dataset_info("imagefolder", image_size=32)["input_shape"] == (3, 32, 32)
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("mnist", "/nowhere", image_size=32)
    with pytest.raises(ValueError, match="image_size"):
        dataset_info("imagefolder", image_size=0)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "imagefolder"])
def test_file_datasets_need_root(name):
    with pytest.raises(DatasetError, match="root="):
        load_dataset(name)


# --------------------------------------------------------------------------- digits, normalise

def test_digits_split_shapes_and_balance():
    (x_tr, y_tr), (x_te, y_te) = load_dataset("digits"), load_dataset("digits", train=False)
    assert x_tr.shape == (1201, 1, 8, 8) and x_te.shape == (596, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    n_tr, n_te = torch.bincount(y_tr, minlength=10), torch.bincount(y_te, minlength=10)
    assert torch.equal((n_tr + n_te) // 3, n_te)  # every third image of each class held out
    assert n_te.min() >= 58 and n_tr.min() >= 116


def test_normalise_uses_training_statistics_only():
    gen = torch.Generator().manual_seed(0)
    x_tr = torch.rand(50, 3, 4, 4, generator=gen)
    x_te = torch.rand(20, 3, 4, 4, generator=gen) * 5 + 2
    (n_tr, n_te), stats = normalise(x_tr, x_te)
    mean = x_tr.mean(dim=(0, 2, 3))
    std = x_tr.std(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(stats["mean"]), mean)
    assert torch.allclose(torch.tensor(stats["std"]), std)
    assert torch.allclose(n_tr.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(n_te, (x_te - mean[:, None, None]) / std[:, None, None])
    assert n_te.mean() > 5  # the test split is not re-centred on its own statistics


# --------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("subdir", ["", "MNIST/raw"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_reads_idx(tmp_path, subdir, suffix):
    folder = tmp_path / subdir
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[np.arange(n), np.arange(n), 27 - np.arange(n)] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) * 3) % 10)
    for train, n in ((True, 5), (False, 3)):
        x, y = load_dataset("mnist", tmp_path, train=train)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.tolist() == [(3 * k) % 10 for k in range(n)]
        lit = x[:, 0].nonzero().tolist()
        assert lit == [[k, k, 27 - k] for k in range(n)] and float(x.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("corrupt,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:6]), "truncated"),
    (lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + p.read_bytes()[4:]), "magic"),
    (lambda p: write_idx(p, np.zeros((4, 28, 28))), "4 images"),
    (lambda p: write_idx(p, np.zeros((4, 28, 27))), r"\(28, 28\)"),
])
def test_mnist_corrupt_files(tmp_path, corrupt, message):
    images = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2))
    corrupt(images)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset("mnist", tmp_path)
    assert "idx" in str(err.value)


def test_mnist_bad_gzip_and_missing_files(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1))
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path, train=False)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path / "empty")
    msg = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "yann.lecun.com/exdb/mnist" in msg


# --------------------------------------------------------------------------- CIFAR

def test_py2_writer_matches_plain_pickle():
    data, labels = cifar_images(2, seed=0)
    raw = b"\x80\x02" + py2_pickle({b"data": data, b"labels": labels}) + b"."
    assert b"numpy.core.multiarray" in raw  # the pre-numpy-2 name the real files use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        batch = pickle.loads(raw, encoding="bytes")
    assert np.array_equal(batch[b"data"], data) and batch[b"labels"] == labels


@pytest.mark.parametrize("point_at_folder", [False, True])
@pytest.mark.parametrize("py2", [True, False], ids=["py2-pickle", "py3-pickle"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickles(tmp_path, name, py2, point_at_folder):
    base = write_cifar(tmp_path, name, py2)
    root = base if point_at_folder else tmp_path
    _, train_files, test_files, _, _ = CIFAR[name]
    for train, files in ((True, train_files), (False, test_files)):
        x, y = load_dataset(name, root, train=train)
        n = PER_FILE * len(files)
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        offset = 0 if train else len(train_files)
        expected = [lab for i in range(len(files)) for lab in cifar_images(PER_FILE, offset + i)[1]]
        assert y.tolist() == expected
        k = PER_FILE - 1  # image k of each file has only green (k, 2k) lit
        assert float(x[k, 1, k, 2 * k]) == pytest.approx(1.0)
        assert float(x[k].sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("content,message", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, "lacks keys"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "lacks keys"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "3072"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 integer labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"0\.\.9"),
    (types.SimpleNamespace(), "refusing to load global types.SimpleNamespace"),
])
def test_cifar_malformed_batch(tmp_path, content, message):
    base = write_cifar(tmp_path, "cifar10", py2=False)
    write_pickle(base / "test_batch", content)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset("cifar10", tmp_path, train=False)
    assert str(base / "test_batch") in str(err.value)


class _Hostile:
    def __reduce__(self):
        return os.getcwd, ()


def test_cifar_refuses_code_and_truncation(tmp_path):
    base = write_cifar(tmp_path, "cifar100", py2=True)
    write_pickle(base / "test", {b"data": _Hostile(), b"fine_labels": []})
    with pytest.raises(DatasetError, match="refusing to load global posix.getcwd"):
        load_dataset("cifar100", tmp_path, train=False)
    (base / "train").write_bytes((base / "train").read_bytes()[:500])
    with pytest.raises(DatasetError, match="cannot unpickle .*cifar-100-python/train"):
        load_dataset("cifar100", tmp_path)


def test_cifar_missing_file(tmp_path):
    base = write_cifar(tmp_path, "cifar10", py2=False)
    (base / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(base / "data_batch_4") in str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(err.value)


# --------------------------------------------------------------------------- ImageFolder

@pytest.mark.parametrize("with_list", [True, False])
def test_imagefolder_labels_and_channels(tmp_path, with_list):
    write_imagefolder(tmp_path, with_list)
    classes = IMAGE_CLASSES if with_list else sorted(IMAGE_CLASSES + ["unlisted"])
    for train, copies in ((True, 2), (False, 1)):
        if not with_list and not train:  # every class needs images in both splits
            write_png(tmp_path / "val" / "unlisted" / "0.png", np.zeros((8, 8, 3), np.uint8))
        x, y = load_dataset("imagefolder", tmp_path, train=train, image_size=8)
        assert x.shape == (len(y), 3, 8, 8) and x.dtype == torch.float32
        for img, label in zip(x, y.tolist()):
            cls = classes[label]
            if cls == "unlisted":
                assert img.sum() == 0
                continue
            c = IMAGE_CLASSES.index(cls)  # the channel the writer lit for this class
            assert img[c, c, c + 1] == pytest.approx(1.0) and img.sum() == pytest.approx(1.0)
        counts = {cls: copies for cls in IMAGE_CLASSES} | {"unlisted": 1}
        expected = [lab for lab, cls in enumerate(classes) for _ in range(counts[cls])]
        assert y.tolist() == expected


def test_imagefolder_resizes_and_converts(tmp_path):
    write_imagefolder(tmp_path)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "train" / "apple" / "big.JPEG")
    write_png(tmp_path / "train" / "mango" / "grey.png", np.full((5, 9), 128, np.uint8), "L")
    (tmp_path / "train" / "mango" / "notes.txt").write_text("not an image")
    x, y = load_dataset("imagefolder", tmp_path, image_size=4)
    assert x.shape == (8, 3, 4, 4) and y.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert x[4, 0].min() > 0.7 and x[4, 1].max() < 0.1  # the red JPEG, after 0.png, 1.png
    assert torch.allclose(x[7], torch.full((3, 4, 4), 128 / 255))  # grey.png, sorted last
    assert load_dataset("imagefolder", tmp_path, train=False)[0].shape == (3, 3, 64, 64)


def test_imagefolder_errors(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "val" / "apple" / "0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="cannot decode image .*val/apple/0.png"):
        load_dataset("imagefolder", tmp_path, train=False)
    (tmp_path / "classes.txt").write_text("zebra\nokapi\n")
    with pytest.raises(DatasetError, match=re.escape(f"not found: class folder {tmp_path}/train/okapi")):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DatasetError, match="cannot be downloaded"):
        load_dataset("imagefolder", tmp_path, download=True)


@pytest.mark.parametrize("with_list", [True, False])
def test_an_empty_imagefolder_class_is_named_with_its_folder(tmp_path, with_list):
    write_imagefolder(tmp_path, with_list)
    cls = IMAGE_CLASSES[1]
    for image in (tmp_path / "train" / cls).iterdir():
        image.unlink()
    (tmp_path / "train" / cls / "notes.txt").write_text("not an image")
    listed = tmp_path / ("classes.txt" if with_list else "train")
    with pytest.raises(DatasetError, match=re.escape(
            f"class {cls!r} has no images (*.JPEG, *.jpg, *.png) in {tmp_path}/train/{cls}: "
            f"add its images, or drop the class from {listed}")):
        load_dataset("imagefolder", tmp_path)


# --------------------------------------------------------------------------- download

def test_download_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes the import fail
    with pytest.raises(DatasetError, match=r"'vision' extra.*by hand.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path, download=True)


def test_download_goes_through_torchvision_then_direct_reader(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:  # stands in for torchvision.datasets.MNIST: writes root/MNIST/raw
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raw = Path(root) / "MNIST" / "raw"
            write_idx(raw / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255))
            write_idx(raw / "t10k-labels-idx1-ubyte", np.array([4, 2]))

    datasets = types.SimpleNamespace(MNIST=FakeMNIST, CIFAR10=None, CIFAR100=None)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("mnist", tmp_path, train=False)  # never downloads by default
    assert calls == []
    x, y = load_dataset("mnist", tmp_path, train=False, download=True)
    assert calls == [(str(tmp_path), False, True)]
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [4, 2] and x.min() == pytest.approx(1.0)


def test_download_failure_is_a_dataset_error(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise RuntimeError("Error downloading cifar-100-python.tar.gz")

    datasets = types.SimpleNamespace(MNIST=None, CIFAR10=None, CIFAR100=offline)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    with pytest.raises(DatasetError, match="could not download cifar100 .*Error downloading"):
        load_dataset("cifar100", tmp_path, download=True)


def test_the_suite_cannot_reach_the_network():
    """The autouse guard in conftest.py: a download test that slipped past its fakes would
    fail here-and-now, not hang or pass on a networked machine."""
    import socket

    from conftest import NetworkBlocked

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkBlocked, match="may not reach the network"):
            sock.connect(("93.184.216.34", 80))
