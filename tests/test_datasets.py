"""Readers of the on-disk data sets: exact contents, the original's label order, the cache, errors.

Everything runs on small data sets written by utils/data/fixtures.py in the real formats; nothing here
touches the network (the CIFAR download is replaced by a stub in every test that could reach it).
"""
import builtins
import os
import pickle
import shlex
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import utils.data.fixtures as datagen
from utils.data import cifar, tiny_imagenet
from utils.base import checkpoint as checkpoint_module
from utils.base.errors import CheckpointError, DataError
from utils.data.cifar import read_cifar
from utils.data.digits import digits_split_indices, read_digits
from utils.data.fixtures import make_cifar, make_tiny_imagenet, tiny_wnids
from utils.data.loader import channel_stats
from utils.data.registry import DATASETS
from utils.data.tiny_imagenet import read_tiny_imagenet, tiny_classes, tiny_files

CIFAR_URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """A test that reaches the CIFAR download fails instead of going to the network."""
    def refuse(spec, root):
        pytest.fail(f"unexpected download of {spec.title} into {root}")
    monkeypatch.setattr(cifar, "_download_cifar", refuse)


def assert_one_line_error(excinfo, *names):
    """The DataError message is one line and names every one of `names` (paths, URLs, ...)."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, f"{name} not in: {message}"


# ----------------------------------------------------------------------------- CIFAR

@pytest.fixture(params=["cifar10", "cifar100"])
def cifar_name(request):
    return request.param


@pytest.mark.parametrize("layout", datagen.CIFAR_LAYOUTS)
def test_cifar_reads_exactly_what_was_written(tmp_path, cifar_name, layout):
    written = make_cifar(tmp_path, cifar_name, n_train=23, n_test=9, seed=1, layout=layout)
    for train, expected in ((True, written.train), (False, written.test)):
        split = read_cifar(tmp_path, cifar_name, train=train)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape) == (len(expected.labels), 3, 32, 32)
        assert np.array_equal(split.images.numpy(), expected.images)
        assert np.array_equal(split.labels.numpy(), expected.labels)


def test_cifar100_reads_fine_not_coarse_labels(tmp_path):
    written = make_cifar(tmp_path, "cifar100", n_train=40, n_test=10)
    labels = read_cifar(tmp_path, "cifar100", train=True).labels.numpy()
    assert not np.array_equal(written.train.labels, written.train.coarse)  # the test can tell
    assert np.array_equal(labels, written.train.labels) and labels.max() >= 20


def test_generated_images_differ_by_label(tmp_path):
    # guards the generator: identical images would make the equality tests above vacuous
    written = make_cifar(tmp_path, "cifar10", n_train=200, n_test=1)
    means = [written.train.images[written.train.labels == y].mean((0, 2, 3)) for y in range(10)]
    assert len({tuple(np.round(m)) for m in means}) == 10
    assert len({im.tobytes() for im in written.train.images}) == 200


@pytest.mark.parametrize("layout", datagen.CIFAR_LAYOUTS)
def test_cifar_equals_torchvision_on_the_same_files(tmp_path, monkeypatch, cifar_name, layout):
    make_cifar(tmp_path, cifar_name, n_train=17, n_test=6, seed=2, layout=layout)
    # the generated files cannot have the official md5 sums
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
    root = tmp_path / datagen.CIFAR_SPECS[cifar_name].folder if layout == "original" else tmp_path
    for train in (True, False):
        reference = cls[cifar_name](str(root), train=train, download=False)
        ours = read_cifar(tmp_path, cifar_name, train=train)
        assert torch.equal(ours.images, torch.from_numpy(reference.data).permute(0, 3, 1, 2))
        assert ours.labels.tolist() == list(reference.targets)


def test_cifar_original_layout_wins_over_torchvision_layout(tmp_path):
    original = make_cifar(tmp_path, "cifar10", 10, 5, seed=3, layout="original")
    make_cifar(tmp_path, "cifar10", 10, 5, seed=4, layout="torchvision")
    assert cifar.cifar_folder(tmp_path, "cifar10") == original.folder
    assert np.array_equal(read_cifar(tmp_path, "cifar10", False).images.numpy(),
                          original.test.images)


def test_cifar_missing_names_the_file_the_url_and_the_download_failure(tmp_path, monkeypatch,
                                                                       cifar_name):
    calls = []
    monkeypatch.setattr(cifar, "_download_cifar",
                        lambda spec, root: calls.append(root) or "URLError: no network here")
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, cifar_name, train=True)
    spec = datagen.CIFAR_SPECS[cifar_name]
    expected = datagen.cifar_folder_path(tmp_path, cifar_name) / spec.test_file
    assert_one_line_error(excinfo, expected, CIFAR_URLS[cifar_name], "no network here")
    assert calls == [tmp_path / spec.folder]


def test_cifar_missing_without_download_never_downloads(tmp_path, cifar_name):
    # the autouse fixture fails the test if the download is attempted
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, cifar_name, train=False, download=False)
    spec = datagen.CIFAR_SPECS[cifar_name]
    expected = datagen.cifar_folder_path(tmp_path, cifar_name) / spec.test_file
    assert_one_line_error(excinfo, expected, CIFAR_URLS[cifar_name])


def test_cifar_successful_download_is_then_read(tmp_path, monkeypatch):
    written = {}

    def fake_download(spec, root):  # what torchvision leaves: <root>/cifar-10-batches-py
        written["data"] = make_cifar(root, "cifar10", 12, 4, layout="torchvision")
        # falls off the end: None is how _download_cifar reports success

    monkeypatch.setattr(cifar, "_download_cifar", fake_download)
    split = read_cifar(tmp_path, "cifar10", train=True)
    assert np.array_equal(split.images.numpy(), written["data"].train.images)


def test_cifar_missing_batch_file_is_named(tmp_path):
    folder = make_cifar(tmp_path, "cifar10", 10, 5).folder
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", train=True)
    assert_one_line_error(excinfo, folder / "data_batch_3")


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "empty"])
def test_cifar_corrupt_pickle_is_a_data_error(tmp_path, damage):
    folder = make_cifar(tmp_path, "cifar10", 10, 5).folder
    path = folder / "data_batch_2"
    content = {"random bytes": np.random.default_rng(0).bytes(5000),
               "truncated": path.read_bytes()[: path.stat().st_size // 2], "empty": b""}[damage]
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", train=True)
    assert_one_line_error(excinfo, path)


class _RunsCode:
    """Unpickling this calls `function(*args)`: what a doctored CIFAR file could do."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    quoted = shlex.quote(str(marker))
    return {"os.system": _RunsCode(os.system, f"touch {quoted}"),
            "builtins.exec": _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("where", ["whole file", "labels value"])
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, payload, where):
    folder = make_cifar(tmp_path, "cifar10", 10, 5).folder
    marker = tmp_path / "code-ran"
    evil = _payloads(marker)[payload]
    obj = evil if where == "whole file" else {b"data": np.zeros((1, 3072), np.uint8),
                                              b"labels": evil}
    blob = pickle.dumps(obj, protocol=2)
    pickle.loads(blob)  # the payload is live: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()
    (folder / "test_batch").write_bytes(blob)
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", train=False)
    assert_one_line_error(excinfo, folder / "test_batch")
    assert not marker.exists()


def _doctored_batch(data, labels, key=b"labels"):
    return {b"batch_label": b"testing batch 1 of 1", b"data": data, key: labels,
            b"filenames": [b"x.png"] * len(labels)}


@pytest.mark.parametrize("data,labels", [
    (np.zeros((4, 1024), np.uint8), [0, 1, 2, 3]),          # one channel only
    (np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 2, 3]),     # already images
    (np.zeros(4 * 3072, np.uint8), [0, 1, 2, 3]),           # flat
    (np.zeros((4, 3072), np.uint8), [0, 1, 2]),             # one label short
], ids=["Nx1024", "NxHxWxC", "flat", "label-count"])
def test_cifar_wrong_data_shape_is_a_data_error(tmp_path, data, labels):
    folder = make_cifar(tmp_path, "cifar10", 10, 5).folder
    datagen.write_py2_pickle(folder / "test_batch", _doctored_batch(data, labels))
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", train=False)
    assert_one_line_error(excinfo, folder / "test_batch")


@pytest.mark.parametrize("name,bad_label", [("cifar10", 10), ("cifar10", -1), ("cifar100", 100)])
def test_cifar_labels_out_of_range_are_a_data_error(tmp_path, name, bad_label):
    spec = datagen.CIFAR_SPECS[name]
    folder = make_cifar(tmp_path, name, 10, 5).folder
    key = b"labels" if name == "cifar10" else b"fine_labels"
    batch = _doctored_batch(np.zeros((3, 3072), np.uint8), [0, bad_label, 1], key)
    datagen.write_py2_pickle(folder / spec.test_file, batch)
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, name, train=False)
    assert_one_line_error(excinfo, folder / spec.test_file)


def test_cifar_pixel_values_outside_uint8_are_a_data_error(tmp_path):
    folder = make_cifar(tmp_path, "cifar10", 10, 5).folder
    data = np.zeros((2, 3072), np.int64)
    data[0, 0], data[1, 0] = 300, -1
    datagen.write_py2_pickle(folder / "test_batch", _doctored_batch(data, [0, 1]))
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", train=False)
    assert_one_line_error(excinfo, folder / "test_batch")


def test_cifar_batch_resaved_with_a_modern_pickle_protocol_reads(tmp_path):
    written = make_cifar(tmp_path, "cifar10", 10, 6)
    path = written.folder / "test_batch"
    batch = {b"data": np.asarray(written.test.images).reshape(6, -1),
             b"labels": written.test.labels.tolist()}
    path.write_bytes(pickle.dumps(batch, protocol=5))
    split = read_cifar(tmp_path, "cifar10", train=False)
    assert np.array_equal(split.images.numpy(), np.asarray(written.test.images))


# ----------------------------------------------------------------------------- Tiny-ImageNet

WNIDS = tiny_wnids(3)
PER_CLASS_TRAIN, PER_CLASS_VAL = 12, 4  # 12 > 10: string order (_10 < _2) differs from numeric


def _make_tiny(root, layout="raw", **kwargs):
    kwargs.setdefault("grayscale_every", 5)
    return make_tiny_imagenet(root, WNIDS, PER_CLASS_TRAIN, PER_CLASS_VAL, seed=3, layout=layout,
                              **kwargs)


def _pillow(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _expected(tiny, train):
    """(images, labels) from Pillow in the reference order: by class index, then file name."""
    files = sorted((tiny.train if train else tiny.val).items(),
                   key=lambda item: (tiny.wnids.index(item[1]), item[0].name))
    images = np.stack([_pillow(path) for path, _ in files]).transpose(0, 3, 1, 2)
    return images, [tiny.wnids.index(wnid) for _, wnid in files]


@pytest.mark.parametrize("layout", datagen.TINY_LAYOUTS)
def test_tiny_labels_are_indices_in_sorted_wnids(tmp_path, layout):
    tiny = _make_tiny(tmp_path, layout)
    assert tiny.written_order != sorted(tiny.written_order)  # wnids.txt really is unsorted
    assert tiny_classes(tiny.root) == sorted(WNIDS)
    for train in (True, False):
        files = tiny_files(tiny.root, train)
        assert [label for _, label in files] == [tiny.label(path) for path, _ in files]
        assert {path for path, _ in files} == set(tiny.train if train else tiny.val)


@pytest.mark.parametrize("layout", datagen.TINY_LAYOUTS)
def test_tiny_pixels_and_order_match_pillow_and_imagefolder(tmp_path, layout):
    tiny = _make_tiny(tmp_path, layout)
    for train in (True, False):
        images, labels = _expected(tiny, train)
        split = read_tiny_imagenet(tmp_path, train=train, num_workers=2)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape) == (len(labels), 3, 64, 64)
        assert np.array_equal(split.images.numpy(), images)
        assert split.labels.tolist() == labels
    # the original code read these folders with torchvision's ImageFolder
    folders = [tiny.root / "train"] + ([tiny.root / "val"] if layout == "rearranged" else [])
    for folder in folders:
        reference = torchvision.datasets.ImageFolder(str(folder)).samples
        ours = tiny_files(tiny.root, train=folder.name == "train")
        assert [(str(p), y) for p, y in ours] == reference


def test_tiny_raw_and_rearranged_val_are_identical(tmp_path):
    _make_tiny(tmp_path / "raw", "raw")
    _make_tiny(tmp_path / "rearranged", "rearranged")
    raw = read_tiny_imagenet(tmp_path / "raw", train=False)
    rearranged = read_tiny_imagenet(tmp_path / "rearranged", train=False)
    assert torch.equal(raw.images, rearranged.images) and torch.equal(raw.labels, rearranged.labels)
    assert len(raw.labels) == len(WNIDS) * PER_CLASS_VAL


def test_tiny_grayscale_jpegs_become_three_equal_channels(tmp_path):
    tiny = _make_tiny(tmp_path, grayscale_every=3)
    gray = {p for p in tiny.grayscale if p in tiny.train}
    assert gray
    for path in gray:
        with Image.open(path) as image:
            assert image.mode == "L"
    split = read_tiny_imagenet(tmp_path, train=True)
    for index, (path, _) in enumerate(tiny_files(tiny.root, train=True)):
        image = split.images[index]
        equal = torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert equal == (path in gray), path


def test_tiny_ignores_boxes_and_test_split(tmp_path):
    tiny = _make_tiny(tmp_path)
    assert (tiny.root / "train" / WNIDS[0] / f"{WNIDS[0]}_boxes.txt").exists()
    files = [path for path, _ in tiny_files(tiny.root, train=True)]
    assert len(files) == len(WNIDS) * PER_CLASS_TRAIN
    assert all(path.suffix == ".JPEG" and "test" not in path.parts for path in files)


def test_tiny_without_wnids_txt_uses_sorted_train_folders(tmp_path):
    tiny = _make_tiny(tmp_path)
    (tiny.root / "wnids.txt").unlink()
    assert tiny_classes(tiny.root) == sorted(WNIDS)


# Tiny-ImageNet cache

def _cache(tiny, train=True):
    return tiny.root / f"cache-{'train' if train else 'val'}-uint8.pt"


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = tiny_imagenet._decode

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(tiny_imagenet, "_decode", counting)
    return calls


def _refuse_decoding(monkeypatch):
    def refuse(path):
        raise AssertionError(f"decoded {path} although the cache is valid")
    monkeypatch.setattr(tiny_imagenet, "_decode", refuse)


def test_tiny_cache_is_written_then_used(tmp_path, monkeypatch):
    tiny = _make_tiny(tmp_path)
    first = read_tiny_imagenet(tmp_path, train=True)
    assert _cache(tiny).exists() and not _cache(tiny, train=False).exists()
    _refuse_decoding(monkeypatch)
    second = read_tiny_imagenet(tmp_path, train=True)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_tiny_cache_is_rebuilt_when_an_image_is_added(tmp_path):
    tiny = _make_tiny(tmp_path)
    before = read_tiny_imagenet(tmp_path, train=True)
    extra = datagen.save_jpeg(tiny.root / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_99.JPEG",
                              datagen.tiny_image(1, np.random.default_rng(9)))
    after = read_tiny_imagenet(tmp_path, train=True)
    assert len(after.labels) == len(before.labels) + 1
    assert torch.load(_cache(tiny), weights_only=True)["images"].shape[0] == len(after.labels)
    index = [path for path, _ in tiny_files(tiny.root, True)].index(extra)
    assert np.array_equal(after.images[index].numpy(), _pillow(extra).transpose(2, 0, 1))


def test_tiny_cache_is_rebuilt_when_a_file_changes_mtime(tmp_path, count_decodes):
    tiny = _make_tiny(tmp_path)
    read_tiny_imagenet(tmp_path, train=True)
    path = next(iter(tiny.train))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    count_decodes.clear()
    read_tiny_imagenet(tmp_path, train=True)
    assert len(count_decodes) == len(tiny.train)


def test_tiny_cache_is_rebuilt_when_a_file_is_replaced(tmp_path):
    tiny = _make_tiny(tmp_path)
    path = min(tiny.train)
    read_tiny_imagenet(tmp_path, train=True)
    replacement = np.full((64, 64, 3), 200, np.uint8)
    replacement[::2] = 10  # a different size on disk, not only a different time
    size = path.stat().st_size
    datagen.save_jpeg(path, replacement)
    assert path.stat().st_size != size
    split = read_tiny_imagenet(tmp_path, train=True)
    index = [p for p, _ in tiny_files(tiny.root, True)].index(path)
    assert np.array_equal(split.images[index].numpy(), _pillow(path).transpose(2, 0, 1))


def test_tiny_truncated_cache_is_rebuilt(tmp_path, count_decodes):
    tiny = _make_tiny(tmp_path)
    expected = read_tiny_imagenet(tmp_path, train=False)
    cache = _cache(tiny, train=False)
    full_size = cache.stat().st_size
    cache.write_bytes(cache.read_bytes()[: full_size // 2])
    count_decodes.clear()
    rebuilt = read_tiny_imagenet(tmp_path, train=False)
    assert len(count_decodes) == len(tiny.val)
    assert torch.equal(rebuilt.images, expected.images)
    assert torch.equal(torch.load(cache, weights_only=True)["images"], expected.images)


@pytest.mark.parametrize("error", [OSError(30, "Read-only file system"),
                                   CheckpointError("could not write checkpoint")])
def test_tiny_unwritable_cache_does_not_fail_the_read(tmp_path, monkeypatch, error):
    tiny = _make_tiny(tmp_path)

    def cannot_write(path, checkpoint):
        raise error

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", cannot_write)
    split = read_tiny_imagenet(tmp_path, train=True)
    assert len(split.labels) == len(tiny.train) and not _cache(tiny).exists()


# Tiny-ImageNet errors

def test_tiny_missing_root_names_the_folder_and_the_url(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_tiny_imagenet(tmp_path, train=True)
    assert_one_line_error(excinfo, tmp_path / "tiny-imagenet-200" / "train", TINY_URL)


def test_tiny_missing_class_folder_is_named(tmp_path):
    tiny = _make_tiny(tmp_path)
    shutil.rmtree(tiny.root / "train" / WNIDS[2])
    with pytest.raises(DataError) as excinfo:
        read_tiny_imagenet(tmp_path, train=True)
    assert_one_line_error(excinfo, tiny.root / "train" / WNIDS[2])


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(3000))


def _truncated(path):
    path.write_bytes(path.read_bytes()[:300])  # the header survives, the scan does not


def _too_small(path):
    datagen.save_jpeg(path, np.zeros((32, 32, 3), np.uint8))


@pytest.mark.parametrize("damage,train,index,text", [
    (_garbage, True, 1, "does not decode"), (_garbage, False, 1, "does not decode"),
    (_truncated, True, 4, "does not decode"), (_too_small, True, 2, "32x32")])
def test_tiny_damaged_image_is_named(tmp_path, damage, train, index, text):
    tiny = _make_tiny(tmp_path)
    path = sorted(tiny.train if train else tiny.val)[index]
    damage(path)
    with pytest.raises(DataError) as excinfo:
        read_tiny_imagenet(tmp_path, train=train)
    assert_one_line_error(excinfo, path, text)


def test_tiny_unknown_wnid_in_val_annotations_names_file_and_line(tmp_path):
    tiny = _make_tiny(tmp_path)
    annotations = tiny.root / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines(keepends=True)
    lines.insert(5, "val_extra.JPEG\tn99999999\t0\t0\t10\t10\n")
    annotations.write_text("".join(lines))
    with pytest.raises(DataError) as excinfo:
        read_tiny_imagenet(tmp_path, train=False)
    assert_one_line_error(excinfo, annotations, "line 6", "n99999999")


def test_tiny_val_image_listed_but_missing_is_a_data_error(tmp_path):
    tiny = _make_tiny(tmp_path)
    path = min(tiny.val)
    path.unlink()
    with pytest.raises(DataError) as excinfo:
        read_tiny_imagenet(tmp_path, train=False)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("train", [True, False])
def test_tiny_split_without_images_is_a_data_error(tmp_path, train):
    tiny = _make_tiny(tmp_path)
    if train:
        for path in tiny.train:
            path.unlink()
    else:
        (tiny.root / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(DataError):
        read_tiny_imagenet(tmp_path, train=train)


# ----------------------------------------------------------------------------- digits

def test_digits_arrays_are_load_digits_read_without_importing_scikit_learn():
    import subprocess
    import sys

    from conftest import ROOT
    from sklearn.datasets import load_digits

    from utils.data.digits import bundled_digits_file, load_digits_arrays
    reference = load_digits()
    images, labels = load_digits_arrays()
    assert bundled_digits_file() is not None  # the file itself is read, not the fallback
    assert images.dtype == reference.images.dtype and np.array_equal(images, reference.images)
    assert labels.dtype == reference.target.dtype and np.array_equal(labels, reference.target)
    probe = ("import sys; from utils.data.digits import read_digits; read_digits(True); "
             "print('sklearn' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.stdout.strip() == "False", shown.stderr


def test_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = digits_split_indices()
    assert (len(train), len(test)) == (1438, 359)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    for digit in range(10):
        assert (labels[test] == digit).sum() == round(0.2 * (labels == digit).sum())
    again = digits_split_indices()
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_digits_images_are_grey_32x32_uint8_over_the_full_range():
    from sklearn.datasets import load_digits

    target = load_digits().target
    for train, indices in zip((True, False), digits_split_indices()):
        split = read_digits(train)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape) == (len(indices), 3, 32, 32)
        assert torch.equal(split.images[:, 0], split.images[:, 1])
        assert torch.equal(split.images[:, 1], split.images[:, 2])
        assert (split.images.min().item(), split.images.max().item()) == (0, 255)
        assert np.array_equal(split.labels.numpy(), target[indices])
        assert torch.equal(read_digits(train).images, split.images)  # deterministic


def test_digits_channel_stats_match_numpy():
    images = read_digits(train=True).images
    mean, std = channel_stats(images)
    x = images.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, x.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(1, ddof=1), rtol=1e-12)


# ----------------------------------------------------------------------------- DATASETS table

def test_datasets_table():
    sizes = {name: (spec.num_classes, spec.input_size) for name, spec in DATASETS.items()}
    assert sizes == {"cifar10": (10, 32), "cifar100": (100, 32), "tiny_imagenet": (200, 64),
                     "digits": (10, 32)}
    for name in ("cifar10", "cifar100"):
        assert DATASETS[name].mean == (0.4914, 0.4822, 0.4465)
        assert DATASETS[name].std == (0.247, 0.243, 0.261)
    assert DATASETS["tiny_imagenet"].mean == (0.4802, 0.4481, 0.3975)
    assert DATASETS["tiny_imagenet"].std == (0.2302, 0.2265, 0.2262)
    # Digits: hardcoded (data-free runs never read the training split), equal to the measured ones
    assert (DATASETS["digits"].mean, DATASETS["digits"].std) == channel_stats(read_digits(True).images)


def test_datasets_table_readers_read_the_right_files(tmp_path):
    cifar10 = make_cifar(tmp_path, "cifar10", 8, 3)
    cifar100 = make_cifar(tmp_path, "cifar100", 8, 3, seed=5)
    _make_tiny(tmp_path)
    for name, written in (("cifar10", cifar10), ("cifar100", cifar100)):
        split = DATASETS[name].read(tmp_path, False, 1)
        assert np.array_equal(split.labels.numpy(), written.test.labels)
    assert len(DATASETS["tiny_imagenet"].read(tmp_path, False, 1).labels) == 3 * PER_CLASS_VAL
    assert len(DATASETS["digits"].read(tmp_path, False, 1).labels) == 359
