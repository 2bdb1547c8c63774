"""Data-parallel training under torchrun: which process this is, and the collectives the engine needs.

    torchrun --nproc_per_node=4 train_scratch.py --save_path DIR
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train_nasty.py --save_path DIR --resume auto

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without it (or with a world of one process)
every function here is a no-op, so a plain `python train_*.py` run is unchanged.
`batch_size` is the global batch: each step, rank r trains on its contiguous share of the
same (seed, epoch)-determined batch that a single process would take (see `shard_bounds`).
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.base.errors import ConfigError
from utils.base.world import active

# The device of this process's run. NCCL takes only tensors on the process's own GPU, so every
# tensor handed to a collective lives there; helpers that make their own tensors read it here.
_run = {"device": torch.device("cpu")}


def run_device():
    """The device `start` was given (the CPU before that, or after `stop`)."""
    return _run["device"]


def start(world, device):
    """Join the process group: NCCL between GPUs, Gloo between CPU processes.

    Returns a line for the log when torchrun's set-up will not survive an elastic restart.
    """
    _run["device"] = torch.device(device)  # also when a caller joined the group itself
    if not world.distributed or dist.is_initialized():
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {"device_id": device} if device.type == "cuda" else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = _attempt_store()
    if store is None:
        dist.init_process_group(backend, **options)
    else:
        dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, **options)
    return _restart_warning(store)


def _shares_agent_store(environ=None):
    return (os.environ if environ is None else environ).get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _attempt_store(environ=None):
    """torchrun's own store, under a prefix of this restart attempt; None: the default set-up.

    By default torchrun's workers share the launcher's store, which outlives a restart and
    still holds the killed attempt's addresses: the restarted ranks then try to connect to
    dead processes (PyTorch issue 135712). On one node every worker has the same restart
    count, so a prefix per attempt keeps the attempts apart.
    """
    environ = os.environ if environ is None else environ
    if not _shares_agent_store(environ) or environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    server = dist.TCPStore(environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), is_master=False,
                           timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"nasty-teacher/attempt-{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}",
                            server)


def _restart_warning(store, environ=None):
    environ = os.environ if environ is None else environ
    if store is None and _shares_agent_store(environ) and int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        return ("warning: several nodes with --max_restarts and torchrun's shared store: a restart "
                "can hang reconnecting (PyTorch issue 135712); launch with "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment")
    return None


def stop(finished=False):
    """Leave the process group; after a finished run, all ranks together (a rank that tore its
    Gloo connections down while rank 0 was still writing could abort at exit)."""
    _run["device"] = torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        if finished and active():
            dist.barrier()
        dist.destroy_process_group()


def all_sum(tensor):
    """Sum `tensor` over all processes, in place; a no-op in a single process."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(parameters):
    """The mean gradient over the ranks, for parameters that DDP does not wrap (an objective's heads)."""
    if not active():
        return
    size = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(size)


def all_min(tensor):
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def share_buffers(model):
    """Rank 0's buffers (batch-norm running statistics) to every rank.

    Each rank updates them from its own share of the last batch; DDP re-sends rank 0's at
    the next training step, but evaluation must use the checkpointed ones everywhere now.
    """
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def check_same_epoch(epoch):
    """All ranks must continue from the same checkpoint (one run folder, shared by all nodes)."""
    if not active():
        return
    bounds = all_min(torch.tensor([epoch, -epoch], device=run_device()))
    low, high = int(bounds[0]), -int(bounds[1])
    if low != high:
        raise ConfigError(f"the ranks resumed from different epochs ({low} to {high}): every node "
                          "must see the same run folder (a shared file system)")


def wrap(model, world, device):
    """DistributedDataParallel around `model` when there are several processes."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_bn_applies(world, device, enabled):
    """Whether batch norm syncs over the ranks: asked for, several processes, on CUDA."""
    if not (enabled and world.distributed):
        return False
    if device.type != "cuda":
        raise ConfigError("sync_bn: 1 needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                          "implementation); set sync_bn to 0 for CPU runs")
    return True


def convert_sync_bn(module, world, device, enabled):
    """Batch-norm statistics over the global batch instead of each rank's share (CUDA only).

    For the trained network and for an objective's own heads alike; frozen networks, which an
    objective keeps outside its submodules, stay as they are (eval mode uses running statistics).
    """
    if not sync_bn_applies(world, device, enabled):
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
