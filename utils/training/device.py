"""Which device a run trains on, and the seeds of every random number generator."""
import random
import sys
from pathlib import Path

import numpy as np
import torch

from utils.base.errors import ConfigError
from utils.base.world import SINGLE


def select_device(args, params, world=SINGLE):
    """CPU or one CUDA device; only an explicit request that cannot be met is an error.

    Under torchrun each process takes the GPU numbered by its LOCAL_RANK.
    """
    if args.gpu_id and len(args.gpu_id) > 1:
        ids = " ".join(map(str, args.gpu_id))
        raise ConfigError(f"--gpu_id {ids}: several GPUs are used through torchrun "
                          f"(DistributedDataParallel), not DataParallel: CUDA_VISIBLE_DEVICES="
                          f"{ids.replace(' ', ',')} torchrun --nproc_per_node={len(args.gpu_id)} "
                          f"{Path(sys.argv[0]).name} --save_path {args.save_path}")
    if world.distributed and args.gpu_id is not None:
        raise ConfigError("--gpu_id does not go with torchrun: each process uses the GPU of its "
                          "LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES")
    wants_cuda = args.device == "cuda" or args.gpu_id is not None
    if args.device == "cpu" and args.gpu_id is not None:
        raise ConfigError("--device cpu and --gpu_id contradict each other")
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested (--device cuda or --gpu_id) but this machine has "
                          "no usable CUDA device")
    index = args.gpu_id[0] if args.gpu_id is not None else world.local_rank if world.distributed else None
    # params.cuda: 1 means "a GPU if there is one", as in the original
    use_cuda = wants_cuda or (args.device == "auto" and params.cuda and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if not 0 <= index < torch.cuda.device_count():
        what = f"--gpu_id {index}" if args.gpu_id is not None else f"LOCAL_RANK {index}"
        raise ConfigError(f"{what}: no such GPU (this machine has {torch.cuda.device_count()})")
    return torch.device("cuda", index)


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
