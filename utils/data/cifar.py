"""Reading the data sets from disk into uint8 tensors: `Split(images N x 3 x H x W, labels N)`.

    train = read_cifar("data", "cifar10", train=True)        # data/data-cifar10/cifar-10-batches-py
    val = read_tiny_imagenet("data", train=False, num_workers=4)
    test = read_digits(train=False)                           # scikit-learn's bundled digits

Every reader raises `DataError` with the file or folder named when something is missing or
unreadable. CIFAR pickles are read with an unpickler that only admits numpy arrays, so a
doctored file cannot run code. Tiny-ImageNet is decoded once into a cache file beside the data.
"""
import contextlib
import os
import pickle
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from utils.base.errors import DataError
from utils.data.augment import CropFlip
from utils.data.registry import DatasetSpec, Split, register_dataset

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


# ----------------------------------------------------------------------------- digits


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


register_dataset("cifar10", DatasetSpec(
    10, 32, CIFAR_MEAN, CIFAR_STD, lambda data_dir, train, workers: read_cifar(data_dir, "cifar10", train),
    partial(CropFlip, padding=4, flip=True), train_images=50000))
register_dataset("cifar100", DatasetSpec(
    100, 32, CIFAR_MEAN, CIFAR_STD, lambda data_dir, train, workers: read_cifar(data_dir, "cifar100", train),
    partial(CropFlip, padding=4, flip=True), train_images=50000))
