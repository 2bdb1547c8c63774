"""scikit-learn's bundled handwritten digits (1 797 real 8 x 8 images), shown to the networks as
3 x 32 x 32: the offline real data set.

    test = read_digits(train=False)
"""
import importlib.util
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.augment import CropFlip
from utils.data.registry import DatasetSpec, Split, register_dataset

DIGITS_SIZE = 32


DIGITS_TEST_FRACTION = 0.2


DIGITS_SPLIT_SEED = 0  # fixed, not the run's seed: teacher and students must share the test split


def bundled_digits_file():
    """scikit-learn's digits.csv.gz, found without importing scikit-learn; None if not there."""
    spec = importlib.util.find_spec("sklearn")  # finds the package, does not run it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def load_digits_arrays():
    """(images (1797, 8, 8) float64 0..16, labels int64): sklearn.datasets.load_digits's arrays.

    Read from its bundled file as load_digits reads it (tests/test_datasets.py checks they are the
    same): importing scikit-learn costs about 2 s, which every Digits run's start-up would pay.
    """
    path = bundled_digits_file()
    if path is None:
        from sklearn.datasets import load_digits
        digits = load_digits()
        return digits.images, digits.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits_split_indices():
    """(train, test) indices of a stratified split of load_digits, the same on every machine."""
    labels = load_digits_arrays()[1]
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
    images, labels = load_digits_arrays()
    indices = digits_split_indices()[0 if train else 1]
    pixels = torch.from_numpy(images[indices]).float().unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(pixels, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear",
                            align_corners=False)
    images_out = resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return Split(images_out, torch.from_numpy(labels[indices]).long())


# measured once on the Digits training split (channel_stats, exact float reprs; a test re-measures
# them): data-free runs must normalise without reading the real training images
DIGITS_MEAN = (0.3057460512456026,) * 3


DIGITS_STD = (0.3240893623633842,) * 3


# mirrored digits are not digits: crop only
register_dataset("digits", DatasetSpec(10, 32, DIGITS_MEAN, DIGITS_STD,
                                       lambda data_dir, train, workers: read_digits(train),
                                       partial(CropFlip, padding=4, flip=False), train_images=1438))
