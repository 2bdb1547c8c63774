"""Small data sets written in the real on-disk formats, for tests and benchmarks.

    cifar = make_cifar(tmp_path, "cifar10", n_train=50, n_test=20)
    read_cifar(tmp_path, "cifar10", train=True)        # == cifar.train.images / .labels
    tiny = make_tiny_imagenet(tmp_path, tiny_wnids(3), per_class_train=12, per_class_val=4)
    tiny.train[path]                                    # -> the wnid the file belongs to

CIFAR batches are Python-2 pickles, as in the official archives: every text and bytes value is
a Python 2 `str` (so `encoding="bytes"` reads bytes keys and torchvision's `encoding="latin1"`
reads str keys) and numpy is named `numpy.core.multiarray._reconstruct`. Tiny-ImageNet is a
folder of real JPEG files laid out as the official zip, or as the original code's rearranged
val folder. Everything is a pure function of the arguments and `seed`.
"""
import pickle
import struct
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------- CIFAR


class CifarSpec(NamedTuple):
    folder: str                # the original code's folder under the data root
    base: str                  # the folder the official archive unpacks to
    train_files: tuple
    test_file: str
    meta_file: str
    num_classes: int


CIFAR_SPECS = {
    "cifar10": CifarSpec("data-cifar10", "cifar-10-batches-py",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                         "batches.meta", 10),
    "cifar100": CifarSpec("data-cifar100", "cifar-100-python", ("train",), "test", "meta", 100),
}
CIFAR_LAYOUTS = ("original", "torchvision")


class Arrays(NamedTuple):
    images: np.ndarray                     # uint8, N x 3 x H x W
    labels: np.ndarray                     # int64, N (CIFAR-100: the fine labels)
    coarse: np.ndarray | None = None    # CIFAR-100 only: the coarse labels written


class CifarData(NamedTuple):
    folder: Path    # the folder holding the batch files
    train: Arrays   # all training batches, concatenated in order
    test: Arrays


class _Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did: str and bytes become Python 2 `str`, numpy its Python 2 names.

    Python 3's protocol 2 writes bytes as `_codecs.encode(...)` calls and numpy as
    `numpy._core...`; neither is what the official files hold."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)
    _RECONSTRUCT = np.ndarray(0).__reduce__()[0]   # whatever numpy calls it today
    PY2_NAMES = ((_RECONSTRUCT, "numpy.core.multiarray", "_reconstruct"),
                 (np.ndarray, "numpy", "ndarray"), (np.dtype, "numpy", "dtype"))

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        for candidate, module, qualname in self.PY2_NAMES:
            if obj is candidate:
                self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
                self.memoize(obj)
                return
        super().save_global(obj, name)


def write_py2_pickle(path, obj):
    """Write `obj` to `path` as a protocol-2 pickle in the official archives' Python 2 style."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def cifar_images(labels, num_classes, rng):
    """N x 3 x 32 x 32 uint8: a label-dependent colour, a gradient and noise (no two alike)."""
    colours = (np.arange(num_classes)[:, None] * np.array([37, 91, 53]) + [20, 60, 100]) % 256
    ramp = np.linspace(-30, 30, 32)
    base = colours[labels][:, :, None, None] + ramp[None, None, :, None]
    noise = rng.integers(-60, 61, size=(len(labels), 3, 32, 32))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _cifar_batch(images, labels, coarse, batch_label):
    """The dict of one batch file, with the official keys (images N x 3 x 32 x 32 -> N x 3072)."""
    filenames = [f"image_{int(y)}_{i:06d}.png".encode() for i, y in enumerate(labels)]
    batch = {b"batch_label": batch_label.encode(), b"data": images.reshape(len(images), -1),
             b"filenames": filenames}
    if coarse is None:
        batch[b"labels"] = [int(y) for y in labels]
    else:
        batch[b"fine_labels"] = [int(y) for y in labels]
        batch[b"coarse_labels"] = [int(y) for y in coarse]
    return batch


def _cifar_arrays(spec, n, rng):
    labels = rng.integers(0, spec.num_classes, size=n).astype(np.int64)
    coarse = labels // 5 if spec.num_classes == 100 else None  # not the real mapping; differs from fine
    return Arrays(cifar_images(labels, spec.num_classes, rng), labels, coarse)


def _cifar_meta(spec):
    if spec.num_classes == 10:
        return {b"label_names": [f"class{i}".encode() for i in range(10)],
                b"num_cases_per_batch": 10000, b"num_vis": 3072}
    return {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}


def cifar_folder_path(root, name, layout="original"):
    """Where `make_cifar` puts (and the readers look for) the batch files."""
    spec = CIFAR_SPECS[name]
    if layout not in CIFAR_LAYOUTS:
        raise ValueError(f"layout must be one of {CIFAR_LAYOUTS}, not {layout!r}")
    return Path(root) / spec.folder / spec.base if layout == "original" else Path(root) / spec.base


def make_cifar(root, name, n_train, n_test, seed=0, layout="original"):
    """Write the python release of CIFAR-10 or CIFAR-100 under `root`; returns the arrays written.

    name: "cifar10" (data_batch_1..5 + test_batch + batches.meta; `n_train` is split over the
    five batches in order) or "cifar100" (train + test + meta, with fine and coarse labels).
    layout: "original" -> root/data-cifar10/cifar-10-batches-py (the original code's folder),
    "torchvision" -> root/cifar-10-batches-py (where torchvision unpacks the archive)."""
    spec = CIFAR_SPECS[name]
    folder = cifar_folder_path(root, name, layout)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train, test = _cifar_arrays(spec, n_train, rng), _cifar_arrays(spec, n_test, rng)
    chunks = np.array_split(np.arange(n_train), len(spec.train_files))
    for number, (filename, idx) in enumerate(zip(spec.train_files, chunks), 1):
        coarse = None if train.coarse is None else train.coarse[idx]
        label = f"training batch {number} of {len(spec.train_files)}"
        write_py2_pickle(folder / filename, _cifar_batch(train.images[idx], train.labels[idx],
                                                         coarse, label))
    write_py2_pickle(folder / spec.test_file, _cifar_batch(test.images, test.labels, test.coarse,
                                                           "testing batch 1 of 1"))
    write_py2_pickle(folder / spec.meta_file, _cifar_meta(spec))
    return CifarData(folder, train, test)


# ----------------------------------------------------------------------------- Tiny-ImageNet

TINY_FOLDER = "tiny-imagenet-200"
TINY_LAYOUTS = ("raw", "rearranged")


class TinyData(NamedTuple):
    root: Path                 # <root>/tiny-imagenet-200
    wnids: list[str]           # sorted: a file's label is wnids.index(its wnid)
    written_order: list[str]   # the (unsorted) order of wnids.txt
    train: dict[Path, str]     # image file -> wnid
    val: dict[Path, str]
    grayscale: set[Path]       # files saved as single-channel JPEG

    def label(self, path):
        """The class index a reader must give `path` (its wnid's place in the sorted wnids)."""
        wnid = self.train.get(Path(path)) or self.val[Path(path)]
        return self.wnids.index(wnid)


def tiny_wnids(n):
    """`n` distinct WordNet-style ids (n + 8 digits), sorted."""
    return sorted(f"n{1443537 + 7919 * i:08d}" for i in range(n))


def tiny_image(wnid_index, rng, size=64):
    """size x size x 3 uint8: a class colour, a diagonal pattern and noise."""
    colour = (wnid_index * np.array([53, 97, 29]) + [40, 80, 120]) % 256
    yy, xx = np.mgrid[0:size, 0:size]
    pattern = 40 * np.sin((xx + yy * (1 + wnid_index % 3)) / 6.0)
    noise = rng.integers(-25, 26, size=(size, size, 3))
    return np.clip(colour + pattern[..., None] + noise, 0, 255).astype(np.uint8)


def save_jpeg(path, array, grayscale=False):
    """Save an H x W x 3 uint8 array as a JPEG (single-channel 'L' when `grayscale`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert("L") if grayscale else image).save(path, format="JPEG", quality=90)
    return path


def _bbox(rng):
    x0, y0 = rng.integers(0, 32, size=2)
    x1, y1 = rng.integers(32, 64, size=2)
    return f"{x0}\t{y0}\t{x1}\t{y1}"


def _unsorted(wnids, rng):
    order = list(rng.permutation(wnids))
    return order[::-1] if order == sorted(order) and len(order) > 1 else order


class _Writer:
    """Numbers the images written so that every k-th one can be made grayscale."""

    def __init__(self, rng, grayscale_every):
        self.rng, self.every, self.count, self.grayscale = rng, grayscale_every, 0, set()

    def write(self, path, class_index):
        self.count += 1
        gray = bool(self.every) and self.count % self.every == 0
        save_jpeg(path, tiny_image(class_index, self.rng), grayscale=gray)
        if gray:
            self.grayscale.add(Path(path))
        return Path(path)


def _write_train(root, wnids, per_class, writer, rng):
    files = {}
    for index, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        boxes = []
        for i in range(per_class):
            files[writer.write(folder / "images" / f"{wnid}_{i}.JPEG", index)] = wnid
            boxes.append(f"{wnid}_{i}.JPEG\t{_bbox(rng)}\n")
        (folder / f"{wnid}_boxes.txt").write_text("".join(boxes))  # official; not an image
    return files


def _write_val(root, wnids, per_class, writer, rng, layout):
    classes = rng.permutation(np.repeat(np.arange(len(wnids)), per_class))  # shuffled classes
    files, annotations = {}, []
    for k, index in enumerate(classes):
        wnid = wnids[index]
        folder = root / "val" / ("images" if layout == "raw" else f"{wnid}/images")
        files[writer.write(folder / f"val_{k}.JPEG", index)] = wnid
        annotations.append(f"val_{k}.JPEG\t{wnid}\t{_bbox(rng)}\n")
    if layout == "raw":
        (root / "val" / "val_annotations.txt").write_text("".join(annotations))
    return files


def make_tiny_imagenet(root, wnids, per_class_train, per_class_val, seed=0, layout="raw",
                       grayscale_every=0):
    """Write `root/tiny-imagenet-200/` as the official zip has it; returns which file is which.

    wnids.txt lists `wnids` in a non-sorted order; train/<wnid>/images/<wnid>_<i>.JPEG (64x64
    JPEGs) with the official train/<wnid>/<wnid>_boxes.txt; test/images/ (unlabelled).
    layout "raw": val/images/val_<k>.JPEG + val/val_annotations.txt (file, wnid, 4 box ints,
    tab-separated), classes shuffled; "rearranged": val/<wnid>/images/val_<k>.JPEG (the layout
    the original code required), same files and pixels as "raw" for the same seed.
    grayscale_every=k saves every k-th image as a single-channel JPEG (0: none)."""
    if layout not in TINY_LAYOUTS:
        raise ValueError(f"layout must be one of {TINY_LAYOUTS}, not {layout!r}")
    wnids = sorted(wnids)
    folder = Path(root) / TINY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = _unsorted(wnids, rng)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in order))
    writer = _Writer(rng, grayscale_every)
    train = _write_train(folder, wnids, per_class_train, writer, rng)
    val = _write_val(folder, wnids, per_class_val, writer, rng, layout)
    for k in range(2):  # the official test split has no labels; readers must ignore it
        save_jpeg(folder / "test" / "images" / f"test_{k}.JPEG", tiny_image(0, rng))
    return TinyData(folder, wnids, order, train, val, writer.grayscale)
