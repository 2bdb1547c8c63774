"""Reading the data sets from disk into uint8 tensors: `Split(images N x 3 x H x W, labels N)`.

    train = read_cifar("data", "cifar10", train=True)        # data/data-cifar10/cifar-10-batches-py
    val = read_tiny_imagenet("data", train=False, num_workers=4)
    test = read_digits(train=False)                           # scikit-learn's bundled digits

Every reader raises `DataError` with the file or folder named when something is missing or
unreadable. CIFAR pickles are read with an unpickler that only admits numpy arrays, so a
doctored file cannot run code. Tiny-ImageNet is decoded once into a cache file beside the data.
"""
import contextlib
import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError, DataError


class Split(NamedTuple):
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N


# ----------------------------------------------------------------------------- CIFAR

class _Cifar(NamedTuple):
    title: str
    folder: str        # the original's root under data_dir
    base: str          # the folder the archive unpacks to (torchvision's base_folder)
    train_files: tuple
    test_files: tuple
    label_key: bytes
    num_classes: int
    url: str
    torchvision_class: str


CIFAR = {
    "cifar10": _Cifar("CIFAR-10", "data-cifar10", "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10,
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10"),
    "cifar100": _Cifar("CIFAR-100", "data-cifar100", "cifar-100-python", ("train",), ("test",),
                       b"fine_labels", 100,
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100"),
}


class _ArraysOnly(pickle.Unpickler):
    """Admits the globals a CIFAR batch needs (numpy arrays) and nothing that could run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path, label_key, num_classes):
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"CIFAR file {path} is missing") from None
    except Exception as exc:  # truncated, not a pickle, refused global, wrong keys
        raise DataError(f"CIFAR file {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if data.dtype != np.uint8 and not _integers_in(data, 0, 255):
        raise DataError(f"CIFAR file {path} holds pixel values that are not integers in 0..255 "
                        f"(dtype {data.dtype})")
    data = data.astype(np.uint8, copy=False)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"CIFAR file {path} holds data of shape {data.shape} with {len(labels)} "
                        "labels; expected N x 3072 and N labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR file {path} has labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _integers_in(array, low, high):
    return (array.dtype.kind in "iu" and (array.size == 0 or
                                           (int(array.min()) >= low and int(array.max()) <= high)))


def cifar_folder(data_dir, name, download=True):
    """The folder holding the batches: the original's layout, torchvision's, or a fresh download."""
    spec = CIFAR[name]
    candidates = [Path(data_dir) / spec.folder / spec.base, Path(data_dir) / spec.base]
    for folder in candidates:
        if (folder / spec.test_files[0]).exists():
            return folder
    reason = "download disabled"
    if download:
        reason = _download_cifar(spec, Path(data_dir) / spec.folder)
        if reason is None:
            return candidates[0]
    raise DataError(f"{spec.title} not found: expected {candidates[0] / spec.test_files[0]} "
                    f"(the python version from {spec.url}, unpacked in {candidates[0].parent}); "
                    f"the download failed: {reason}")


def _download_cifar(spec, root):
    """Download and verify (md5) through torchvision; returns None on success, else the reason."""
    import torchvision

    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            getattr(torchvision.datasets, spec.torchvision_class)(root=str(root), train=False,
                                                                  download=True)
        return None
    except Exception as exc:  # no network, proxy, checksum: all reported the same way
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def read_cifar(data_dir, name, train, download=True):
    spec = CIFAR[name]
    folder = cifar_folder(data_dir, name, download)
    parts = [_read_cifar_batch(folder / f, spec.label_key, spec.num_classes)
             for f in (spec.train_files if train else spec.test_files)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


# ----------------------------------------------------------------------------- Tiny-ImageNet

TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_SIZE = 64
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_CACHE_VERSION = 1


def _tiny_root(data_dir):
    root = Path(data_dir) / TINY_FOLDER
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(f"Tiny-ImageNet not found: expected the folders {root / 'train'} and "
                        f"{root / 'val'} (unpack {TINY_URL} in {Path(data_dir)})")
    return root


def _images_below(folder):
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def tiny_classes(root):
    """Sorted wnids (so train and val share indices, as ImageFolder's sorted folders did)."""
    wnids = root / "wnids.txt"
    if wnids.exists():
        return sorted(line.strip() for line in wnids.read_text().splitlines() if line.strip())
    return sorted(p.name for p in (root / "train").iterdir() if p.is_dir())


def tiny_files(root, train):
    """[(path, label)] in ImageFolder order: by class, then by file name."""
    index = {wnid: i for i, wnid in enumerate(tiny_classes(root))}
    if train:
        files = []
        for wnid, label in index.items():
            folder = root / "train" / wnid
            if not folder.is_dir():
                raise DataError(f"Tiny-ImageNet class folder {folder} is missing (listed in wnids.txt)")
            files += [(p, label) for p in _images_below(folder)]
        return files
    annotations = root / "val" / "val_annotations.txt"
    if annotations.exists() and (root / "val" / "images").is_dir():
        return _raw_val_files(root, annotations, index)
    files = [(p, index[d.name]) for d in sorted((root / "val").iterdir())
             if d.is_dir() and d.name in index for p in _images_below(d)]
    if not files:
        raise DataError(f"Tiny-ImageNet validation images not found: expected {annotations} with "
                        f"{root / 'val' / 'images'}, or class folders {root / 'val'}/<wnid>/")
    return files


def _raw_val_files(root, annotations, index):
    files = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations} line {number}: expected '<file>\\t<wnid>...' with a known "
                            f"wnid, got {line[:80]!r}")
        path = root / "val" / "images" / fields[0]
        if not path.exists():
            raise DataError(f"{annotations} line {number}: image {path} is missing")
        files.append((path, index[fields[1]]))
    return sorted(files, key=lambda item: (item[1], item[0].name))


def _decode(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"image {path} does not decode ({type(exc).__name__}: {exc})") from None
    if array.shape[:2] != (TINY_SIZE, TINY_SIZE):
        raise DataError(f"image {path} is {array.shape[1]}x{array.shape[0]}, expected "
                        f"{TINY_SIZE}x{TINY_SIZE}")
    return array


def _fingerprint(files):
    digest = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for path, label in files:
        stat = os.stat(path)
        digest.update(f"{path.name}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_tiny_imagenet(data_dir, train, num_workers=4):
    """Decoded split, from `<root>/cache-{train,val}-uint8.pt` when that matches the files."""
    root = _tiny_root(data_dir)
    files = tiny_files(root, train)
    if not files:
        raise DataError(f"Tiny-ImageNet {'train' if train else 'val'} split under {root} has no images")
    cache = root / f"cache-{'train' if train else 'val'}-uint8.pt"
    fingerprint = _fingerprint(files)
    split = _read_cache(cache, fingerprint, len(files))
    if split is None:
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:  # PIL releases the GIL
            arrays = list(pool.map(_decode, [path for path, _ in files]))
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        split = Split(images, torch.tensor([label for _, label in files], dtype=torch.int64))
        _write_cache(cache, fingerprint, split)
    return split


def _read_cache(path, fingerprint, count):
    """The cached split, or None when it is absent, stale or damaged (it is then rebuilt)."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        split = Split(cached["images"], cached["labels"])
        valid = (cached["fingerprint"] == fingerprint and split.images.dtype == torch.uint8
                 and tuple(split.images.shape) == (count, 3, TINY_SIZE, TINY_SIZE)
                 and tuple(split.labels.shape) == (count,))
    except Exception:  # truncated or foreign file: rebuild
        return None
    return split if valid else None


def _write_cache(path, fingerprint, split):
    from .checkpoint import save_checkpoint

    # a read-only data folder only costs decoding again next time
    with contextlib.suppress(CheckpointError, OSError):
        save_checkpoint(path, {"fingerprint": fingerprint, "images": split.images,
                               "labels": split.labels})


# ----------------------------------------------------------------------------- digits

DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed, not the run's seed: teacher and students must share the test split


def digits_split_indices():
    """(train, test) indices of a stratified split of load_digits, the same on every machine."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    rs = np.random.RandomState(DIGITS_SPLIT_SEED)
    test = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test += rs.permutation(members)[: int(round(DIGITS_TEST_FRACTION * len(members)))].tolist()
    test = np.sort(np.asarray(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def read_digits(train):
    """8x8 digits (0..16) scaled to 0..255, resized to 32x32 (bilinear), grey replicated to RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    indices = digits_split_indices()[0 if train else 1]
    pixels = torch.from_numpy(digits.images[indices]).float().unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(pixels, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear",
                            align_corners=False)
    images = resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return Split(images, torch.from_numpy(digits.target[indices]).long())
