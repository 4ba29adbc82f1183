"""Dataset loaders: one entry point, `load_dataset`, returning image tensors and labels.

Images come back as float32 (N, C, H, W) in [0, 1] (unnormalised); labels as int64 (N,).
Normalisation statistics are computed from the training split by `normalise`.

Files are read in their official on-disk formats (MNIST IDX, CIFAR python pickles, an
ImageFolder tree), so nothing here needs torchvision; it is used only for `download=True`.
"""

from __future__ import annotations

import builtins
import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkpipe.errors import InputError

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagefolder")

# digits ships without a train/test split; ours is a fixed stratified one (every third image of
# each class is held out), so it never depends on a random state.
DIGITS_TEST_EVERY = 3

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGENET_URL = "https://image-net.org/download.php"
IMAGENET100_CLASSES_URL = "https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt"

_INFO: dict[str, tuple[int, tuple[int, int, int], str]] = {
    "digits": (10, (1, 8, 8),
               "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"),
    "mnist": (10, (1, 28, 28), MNIST_URL),
    "cifar10": (10, (3, 32, 32), CIFAR10_URL),
    "cifar100": (100, (3, 32, 32), CIFAR100_URL),
    "imagefolder": (100, (3, 64, 64), IMAGENET_URL),  # nominal: ImageNet-100 at image_size=64
}
_OPTIONS = {"imagefolder": {"image_size"}}
_DOWNLOADABLE = ("mnist", "cifar10", "cifar100")
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


class DatasetError(InputError, RuntimeError):
    """A dataset is missing, truncated or malformed; the message names the file."""


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def dataset_info(name: str, **options: Any) -> dict[str, Any]:
    """Number of classes, input shape (C, H, W) and official source URL of a dataset."""
    _check_name(name)
    _check_options(name, options)
    num_classes, shape, url = _INFO[name]
    if name == "imagefolder":
        size = _image_size(options)
        shape = (3, size, size)
    return {"name": name, "num_classes": num_classes, "input_shape": shape, "url": url}


def load_dataset(name: str, root: str | Path | None = None, train: bool = True, *,
                 download: bool = False, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) float32 in [0, 1] and labels (N,) int64 of one split of a dataset."""
    _check_name(name)
    _check_options(name, options)
    if name == "digits":
        return _load_digits(train)
    if root is None:
        raise DatasetError(f"{name} needs root=<folder>. {_how_to_get(name, Path('<root>'))}")
    root = Path(root).expanduser()
    if download:
        _download(name, root, train)
    if name == "mnist":
        return _load_mnist(root, train)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, train)
    return _load_imagefolder(root, train, _image_size(options))


def normalise(x_train: torch.Tensor, *others: torch.Tensor
              ) -> tuple[list[torch.Tensor], dict[str, list[float]]]:
    """Standardise every split per channel (axis 1) with the training split's mean and std
    over every other axis: per channel of (N, C, H, W) images, per feature of (N, d) vectors."""
    dims = (0, *range(2, x_train.dim()))
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    out = [(x - mean) / std for x in (x_train, *others)]
    stats = {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
    return out, stats


# --------------------------------------------------------------------------- options, errors

def _check_options(name: str, options: dict[str, Any]) -> None:
    unknown = set(options) - _OPTIONS.get(name, set())
    if unknown:
        allowed = sorted(_OPTIONS.get(name, set())) or "none"
        raise TypeError(f"unknown option(s) {sorted(unknown)} for dataset {name!r}; "
                        f"allowed: {allowed}")


def _image_size(options: dict[str, Any]) -> int:
    size = options.get("image_size", 64)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive int, got {size!r}")
    return size


def _how_to_get(name: str, root: Path, offer_download: bool = True) -> str:
    download = (", or pass download=True (needs the 'vision' extra and a network)."
                if offer_download else ".")
    if name == "mnist":
        return (f"Download the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz) from "
                f"{MNIST_URL} (mirror: {MNIST_MIRROR}) into {root} or {root / 'MNIST' / 'raw'}"
                + download)
    if name in ("cifar10", "cifar100"):
        url = CIFAR10_URL if name == "cifar10" else CIFAR100_URL
        folder, files = _CIFAR[name][:2]
        listed = ", ".join(sorted({f for split in files.values() for f in split}))
        return (f"Download {url} and extract it into {root}, so that {root / folder} holds "
                f"{listed} (root may also be {folder} itself)"
                + download)
    return (f"Expected {root}/train/<class>/*.JPEG|jpg|png and {root}/val/<class>/..., and "
            f"optionally {root / 'classes.txt'} (one class folder per line, in label order). "
            f"ImageNet-100 is the ILSVRC-2012 subset listed in {IMAGENET100_CLASSES_URL}; "
            f"ILSVRC-2012 needs registration at {IMAGENET_URL} and cannot be downloaded here "
            f"(sort its val images into class folders first).")


def _missing(name: str, expected: str, root: Path) -> DatasetError:
    return DatasetError(f"{name}: not found: {expected}. {_how_to_get(name, root)}")


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).to(torch.float32).div_(255.0)


# --------------------------------------------------------------------------- digits

def _load_digits(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    held_out = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held_out[idx[DIGITS_TEST_EVERY - 1::DIGITS_TEST_EVERY]] = True
    keep = ~held_out if train else held_out
    x = torch.from_numpy(images[keep]).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels[keep])
    return x, y


# --------------------------------------------------------------------------- MNIST (IDX)

_IDX_UBYTE = 0x08


def _find_mnist_file(root: Path, stem: str) -> Path:
    folders = (root, root / "MNIST" / "raw")
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    expected = " or ".join(f"{folder / stem}[.gz]" for folder in folders)
    raise _missing("mnist", expected, root)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than "
                           f"its {header}-byte header")
    magic = int.from_bytes(data[:4], "big")
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise DatasetError(f"IDX file {path} has bad magic number {magic:#010x}; expected "
                           f"{_IDX_UBYTE << 8 | ndim:#010x} (unsigned bytes, {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "too long"
        raise DatasetError(f"IDX file {path} is {state}: {len(data)} bytes, but its header "
                           f"(dims {dims}) implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    images_path = _find_mnist_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_mnist_file(root, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, 3)
    labels = _read_idx(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"IDX file {images_path} holds images of {images.shape[1:]}, "
                           f"expected (28, 28)")
    if len(labels) != len(images):
        raise DatasetError(f"{labels_path} has {len(labels)} labels but {images_path} has "
                           f"{len(images)} images")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"IDX file {labels_path} holds label {labels.max()}, expected 0..9")
    return _to_float(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------- CIFAR (pickles)

# folder inside the archive, files per split, label key, number of classes
_CIFAR: dict[str, tuple[str, dict[bool, tuple[str, ...]], bytes, int]] = {
    "cifar10": ("cifar-10-batches-py",
                {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)},
                b"labels", 10),
    "cifar100": ("cifar-100-python", {True: ("train",), False: ("test",)}, b"fine_labels", 100),
}


def _numpy_global(name: str) -> Any:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,
            "_frombuffer": numeric._frombuffer}[name]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_SAFE_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes", "str",
                  "int", "float", "complex", "bool"}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain builtins (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        # Pickles can call any importable callable, so a hostile file could run code. The
        # official CIFAR files (Python 2, protocol 2) only reference these names; numpy 2
        # renamed numpy.core to numpy._core, and Python 3 protocol-2 pickles encode bytes
        # through _codecs.encode(..., 'latin1').
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and \
                name in ("_reconstruct", "scalar"):
            return _numpy_global(name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _numpy_global(name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DatasetError(f"cannot read CIFAR file {path}: {e}") from e
    except Exception as e:  # truncated or hostile files fail in many ways
        raise DatasetError(f"cannot unpickle CIFAR file {path} (truncated or not a CIFAR "
                           f"pickle?): {type(e).__name__}: {e}") from e


def _read_cifar_batch(path: Path, label_key: bytes, num_classes: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"CIFAR file {path} lacks keys b'data' and {label_key!r}; "
                           f"found {found}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetError(f"CIFAR file {path}: b'data' is {desc}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"CIFAR file {path}: {label_key!r} has shape {labels.shape}, "
                           f"expected {len(data)} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"CIFAR file {path}: labels outside 0..{num_classes - 1}")
    return data, labels.astype(np.int64)


def _load_cifar(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder, files, label_key, num_classes = _CIFAR[name]
    base = root / folder if (root / folder).is_dir() else root
    parts = []
    for file in files[train]:
        path = base / file
        if not path.is_file():
            expected = str(path) if base != root else f"{root / folder / file} or {path}"
            raise _missing(name, expected, root)
        parts.append(_read_cifar_batch(path, label_key, num_classes))
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    # Official row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major.
    x = _to_float(data.reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels)


# --------------------------------------------------------------------------- ImageFolder

def _class_names(root: Path) -> list[str]:
    listing = root / "classes.txt"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DatasetError(f"{listing} lists classes more than once: {duplicates}")
        if not names:
            raise DatasetError(f"{listing} lists no classes")
        return names
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise _missing("imagefolder", f"{train_dir}/<class>/ (class names come from there "
                       f"when {listing} is absent)", root)
    return sorted(p.name for p in train_dir.iterdir() if p.is_dir())


def _decode_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            # JPEG draft mode decodes at a reduced DCT scale (still >= size), far faster for
            # full-size ImageNet photos; it is a no-op for PNG.
            img.draft("RGB", (size, size))
            # A plain square resize (aspect ratio squashed), as in downsampled ImageNet.
            img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DatasetError(f"cannot decode image {path}: {e}") from e


def _load_imagefolder(root: Path, train: bool, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    classes = _class_names(root)
    split_dir = root / ("train" if train else "val")
    files: list[tuple[Path, int]] = []
    # Classes on disk but absent from classes.txt are skipped on purpose: a full ILSVRC tree
    # plus the ImageNet-100 list gives ImageNet-100.
    for label, cls in enumerate(classes):
        cls_dir = split_dir / cls
        if not cls_dir.is_dir():
            raise _missing("imagefolder", f"class folder {cls_dir}", root)
        found = [(p, label) for p in sorted(cls_dir.iterdir())
                 if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
        if not found:
            listed = root / "classes.txt"
            raise DatasetError(f"class {cls!r} has no images (*.JPEG, *.jpg, *.png) in "
                               f"{cls_dir}: add its images, or drop the class from "
                               f"{listed if listed.is_file() else root / 'train'}")
        files += found
    if not files:
        raise _missing("imagefolder", f"images (*.JPEG, *.jpg, *.png) under {split_dir}/<class>/",
                       root)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = _decode_image(path, size)
    x = _to_float(images).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return x, y


# --------------------------------------------------------------------------- download

def _download(name: str, root: Path, train: bool) -> None:
    if name not in _DOWNLOADABLE:
        raise DatasetError(f"{name} cannot be downloaded automatically. "
                           f"{_how_to_get(name, root)}")
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # a CUDA-only wheel raises RuntimeError on import, not ImportError
        raise DatasetError(
            f"download=True needs torchvision: install the 'vision' extra "
            f"(pip install 'ntkpipe[vision]'), or place the files by hand. "
            f"{_how_to_get(name, root, offer_download=False)}") from e
    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    # torchvision checks the archives' MD5 and only fetches what is missing; the files land
    # in the layouts the direct readers look for (root/MNIST/raw, root/cifar-*-python*).
    try:
        cls(str(root), train=train, download=True)
    except Exception as e:  # no network, a dead mirror, a full disk...
        raise DatasetError(f"torchvision could not download {name} into {root}: "
                           f"{type(e).__name__}: {e}. "
                           f"{_how_to_get(name, root, offer_download=False)}") from e
