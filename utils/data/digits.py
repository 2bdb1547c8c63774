"""scikit-learn's bundled handwritten digits (1 797 real 8 x 8 images), shown to the networks as
3 x 32 x 32: the offline real data set.

    test = read_digits(train=False)
"""
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.augment import CropFlip
from utils.data.registry import DatasetSpec, Split, register_dataset

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


# measured once on the Digits training split (channel_stats, exact float reprs; a test re-measures
# them): data-free runs must normalise without reading the real training images
DIGITS_MEAN = (0.3057460512456026,) * 3


DIGITS_STD = (0.3240893623633842,) * 3


# mirrored digits are not digits: crop only
register_dataset("digits", DatasetSpec(10, 32, DIGITS_MEAN, DIGITS_STD,
                                       lambda data_dir, train, workers: read_digits(train),
                                       partial(CropFlip, padding=4, flip=False)))
