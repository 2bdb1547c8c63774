"""Tiny-ImageNet (200 classes, 64 x 64): the raw download's folders or a rearranged copy, decoded
once into a cache file beside the data.

    val = read_tiny_imagenet("data", train=False, num_workers=4)
"""
import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from utils.base.errors import CheckpointError, DataError
from utils.data.augment import RotateFlip
from utils.data.registry import DatasetSpec, Split, register_dataset

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
    from utils.base.checkpoint import save_checkpoint

    # a read-only data folder only costs decoding again next time
    with contextlib.suppress(CheckpointError, OSError):
        save_checkpoint(path, {"fingerprint": fingerprint, "images": split.images,
                               "labels": split.labels})


TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)


register_dataset("tiny_imagenet", DatasetSpec(200, 64, TINY_MEAN, TINY_STD, read_tiny_imagenet,
                                               partial(RotateFlip, degrees=20), train_images=100000))
