"""Which process of a torchrun job this is (`World`), and the few process-group facts the data
layer needs: each rank's share of a batch, rank 0 first for downloads and caches.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without it (or with a world of one process) every
function here is a no-op. The collectives of training are in utils/training/distributed.py.
"""
import contextlib
import os
from typing import NamedTuple

import torch.distributed as dist

from utils.base.errors import ConfigError


class World(NamedTuple):
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        """Rank 0 alone writes the log, metrics, tensorboard scalars and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1


SINGLE = World()


def launched_world(environ=None):
    """The World torchrun describes in the environment; SINGLE outside torchrun."""
    environ = os.environ if environ is None else environ
    size = int(environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(environ["RANK"]), size, int(environ.get("LOCAL_RANK", "0")))


def active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier():
    """Every rank waits here for the others (nothing to do in a single process)."""
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first(world):
    """Rank 0 runs the block before the others do (a download or a cache to write), then the rest."""
    if active() and not world.is_main:
        dist.barrier()
    yield
    if active() and world.is_main:
        dist.barrier()


def shard_bounds(start_index, stop_index, rank, size):
    """[lo, hi) of rank's contiguous share of positions start..stop, sizes differing by one at most."""
    base, extra = divmod(stop_index - start_index, size)
    lo = start_index + rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def smallest_shard(num_samples, batch_size, size):
    """The fewest images any rank gets in any training step."""
    full = batch_size // size if num_samples >= batch_size else num_samples // size
    rest = num_samples % batch_size
    return min(full, rest // size) if rest else full


def check_world_batch(path, batch_size, num_samples, world):
    """Every rank needs >= 2 images per step: batch normalisation cannot train on one."""
    if not world.distributed:
        return
    smallest = smallest_shard(num_samples, batch_size, world.size)
    if smallest < 2:
        raise ConfigError(
            f"{path}: batch_size {batch_size} (the global batch) over {world.size} processes "
            f"leaves a rank {smallest} image(s) in some step ({num_samples} training images); "
            "batch normalisation needs 2: use a larger batch_size or fewer processes")
