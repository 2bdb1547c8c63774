"""The data set table: every module of utils/data/ that reads a data set registers it here.

    from utils.data.registry import DatasetSpec, register_dataset
    register_dataset("digits", DatasetSpec(10, 32, mean, std, read, augmentation))
    DATASETS["cifar100"].num_classes                      # 100

A new data set is a new module in utils/data/ that calls `register_dataset` (see
docs/extending.md): the package imports every module, so no other file changes.
"""
from typing import Callable, NamedTuple, Optional, Tuple

import torch


class Split(NamedTuple):
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N


class DatasetSpec(NamedTuple):
    num_classes: int
    input_size: int
    mean: Optional[Tuple[float, ...]]  # per channel, 0..1 scale; None: measured on the training split
    std: Optional[Tuple[float, ...]]
    read: Callable                     # read(data_dir, train, num_workers) -> Split
    augmentation: Callable             # () -> the training augmentation of the original
    train_images: Optional[int] = None  # size of the training split: reproduce.py's cost estimates


DATASETS = {}


def register_dataset(name, spec):
    """Add a data set under the `dataset` value that selects it; a name means one data set."""
    if name in DATASETS:
        raise ValueError(f"data set {name!r} is registered twice")
    DATASETS[name] = spec
    return spec
