"""Data sets as uint8 tensors on the training device, augmented and normalised per batch.

    train_loader, test_loader = build_loaders(params, device)
    for epoch in range(start, params.num_epochs):
        train_loader.set_epoch(epoch)       # batches and augmentation depend on (seed, epoch) only
        for images, labels in train_loader: ...

A split costs its uint8 size in device memory; each batch is gathered, augmented with
batched tensor operations (see utils/data/augment.py) and converted to normalised float there.
The same code runs on CPU and CUDA, and draws its random numbers on the CPU, so both see
identical batches for the same seed.
"""
import math

import torch

from utils.base.errors import ConfigError
from utils.base.world import SINGLE, check_world_batch, main_first, shard_bounds
from utils.data.augment import NoAugmentation
from utils.data.registry import DATASETS


def channel_stats(images):
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.double().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def epoch_seed(seed, epoch):
    """The seed of one epoch's random streams (data order, augmentation, dropout)."""
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def epoch_generator(seed, epoch):
    """CPU generator whose stream is a function of (seed, epoch) alone, so a resume is exact."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class DeviceLoader:
    """Iterates (normalised float images, int64 labels) batches of a split held on `device`.

    Under torchrun (`world` of several processes) a training loader (shuffle) yields each
    rank's contiguous share of every global batch, so the ranks together see exactly the
    batches, crops and flips of a single process; an evaluation loader gives each rank a
    contiguous share of the split, in batches of `batch_size`.
    """

    def __init__(self, split, batch_size, device, mean, std, augmentation=None,
                 shuffle=False, seed=0, channels_last=False, world=SINGLE):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.shuffle, self.seed, self.world = batch_size, shuffle, seed, world
        self.augmentation = augmentation or NoAugmentation()
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.scale, self.shift = 1.0 / (255.0 * std_t), mean_t / std_t
        self.epoch = 0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        """Steps of this rank: every global batch when training, its share's batches otherwise."""
        if self.shuffle:
            return math.ceil(len(self.labels) / self.batch_size)
        lo, hi = shard_bounds(0, len(self.labels), self.world.rank, self.world.size)
        return math.ceil((hi - lo) / self.batch_size)

    @property
    def num_samples(self):
        """Images in the whole split (all ranks together)."""
        return len(self.labels)

    def batch_sizes(self):
        """Global size of each step's batch (for a sharded training loader: all ranks' shares)."""
        return [stop - start for start, stop in self._global_batches()]

    def _global_batches(self):
        n = len(self.labels)  # the last partial batch is kept
        return [(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]

    def _batches(self):
        """[lo, hi) positions in this epoch's order that this rank takes, step by step."""
        rank, size = self.world.rank, self.world.size
        if self.shuffle:
            return [shard_bounds(start, stop, rank, size) for start, stop in self._global_batches()]
        lo, hi = shard_bounds(0, len(self.labels), rank, size)
        return [(start, min(start + self.batch_size, hi)) for start in range(lo, hi, self.batch_size)]

    def __iter__(self):
        n, device = len(self.labels), self.labels.device
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        draws = self.augmentation.draw(n, generator)  # one per position in this epoch's order
        order = order.to(device)
        draws = {k: v.to(device) for k, v in draws.items()}
        for lo, hi in self._batches():
            idx = order[lo:hi]
            images = self.augmentation.apply(self.images[idx], {k: v[lo:hi] for k, v in draws.items()})
            images = images.float() * self.scale - self.shift
            yield images.contiguous(memory_format=self.memory_format), self.labels[idx]


def check_batch_size(params, num_train):
    where = f"{params.source}: batch_size {params.batch_size}"
    if params.batch_size > num_train:
        raise ConfigError(f"{where} is larger than the {params.dataset} training split "
                          f"({num_train} images)")
    if num_train % params.batch_size == 1:
        raise ConfigError(f"{where} leaves a last training batch of 1 image ({num_train} images), "
                          "which batch normalisation cannot train on; choose another batch_size")


def build_loaders(params, device, eval_batch_size=None, world=SINGLE, train_split=None):
    """(train, test) loaders for `params.dataset` under `params.data_dir`; `world`: see DeviceLoader.
    `train_split` (a Split) replaces the real training split, which is then never read."""
    spec = DATASETS[params.dataset]
    with main_first(world):  # one download or cache build, which the other ranks then read
        train = train_split if train_split is not None else spec.read(params.data_dir, True,
                                                                     params.num_workers)
        test = spec.read(params.data_dir, False, params.num_workers)
    check_batch_size(params, len(train.labels))
    check_world_batch(params.source, params.batch_size, len(train.labels), world)
    mean, std = (spec.mean, spec.std) if spec.mean else channel_stats(train.images)
    augmentation = spec.augmentation() if params.augmentation else NoAugmentation()
    layout = getattr(params, "channels_last", False)
    train_loader = DeviceLoader(train, params.batch_size, device, mean, std, augmentation,
                                shuffle=True, seed=params.seed, channels_last=layout, world=world)
    test_loader = DeviceLoader(test, eval_batch_size or params.batch_size, device, mean, std,
                               channels_last=layout, world=world)
    return train_loader, test_loader


def build_test_loader(params, device, batch_size, world=SINGLE):
    """The test loader alone (evaluation): the training split is read only by a data set whose
    normalisation is measured on it; no training key (batch_size, ...) is needed."""
    spec = DATASETS[params.dataset]
    with main_first(world):
        test = spec.read(params.data_dir, False, params.num_workers)
        mean, std = ((spec.mean, spec.std) if spec.mean else
                     channel_stats(spec.read(params.data_dir, True, params.num_workers).images))
    return DeviceLoader(test, batch_size, device, mean, std,
                        channels_last=getattr(params, "channels_last", False), world=world)
