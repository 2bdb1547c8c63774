"""A frozen network's outputs on a run's training batches, kept on disk for the next run that asks
the same network the same batches (`teacher_cache: 1` of the students, methods/kd.py).

On a CPU a student's step is mostly its teacher's forward (a Digits kd student: 86% of its
epoch). An epoch's batches are a pure function of the split, the seed, the batch size, the
augmentation and the rank (utils/data/loader.DeviceLoader), so every student of one teacher
checkpoint with those settings asks the same questions. The first run to finish an epoch writes
its answers (`epoch_<e>.pt`, atomically), later runs read them. No run waits for another: two
runs at once both compute an epoch neither finds. Each epoch read is checked on its first batch
(the network's output must equal the file's bit for bit); on a mismatch the cache is dropped with
a warning and the run computes everything as it would without it, so a stale or foreign file
can cost time but never change a number.

    cache = AnswerCache(folder, log)
    outputs = cache.outputs(step, lambda: teacher(images))   # step: utils.training.step.Step
"""
import hashlib
import json
from pathlib import Path

import torch

from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.base.errors import CheckpointError


def cache_digest(facts):
    """A short name for everything that decides the answers (network, split, batches, numerics)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_digest(images, labels):
    """Content identity of a training split: the same files, or the same synthetic set."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class AnswerCache:
    """The answers of one frozen network to one run's batches, epoch by epoch, in `folder`."""

    def __init__(self, folder, log):
        self.folder, self.log = Path(folder), log
        self.epoch = None
        self.read = None        # this epoch's answers from the file, or None: computing them
        self.made = []          # this epoch's computed answers, step by step, to be written
        self.off = False        # dropped: a mismatch, or a folder that takes no files
        self.epochs_read = 0

    def path(self, epoch):
        return self.folder / f"epoch_{epoch}.pt"

    def outputs(self, step, compute):
        """The network's outputs at `step`: from the file, or `compute()` (and kept for it)."""
        if self.off:
            return compute()
        if step.epoch != self.epoch:
            self.begin(step.epoch, step.steps)
        if self.read is not None:
            if step.step != 0:
                return self.read[step.step]
            fresh = compute()
            if self.matches(fresh, self.read[0]):
                self.read = [answers.to(fresh.device) for answers in self.read]  # once an epoch
                return fresh
            self.drop(f"{self.path(step.epoch)} does not hold this network's answers to this run's "
                      "batches (its first batch differs)")
            return fresh
        fresh = compute()
        if step.step == len(self.made):  # a contiguous epoch from its first step
            self.made.append(fresh.detach().clone())  # to the host at the epoch's end, not each step
            if len(self.made) == step.steps:
                self.write(step.epoch)
        return fresh

    def begin(self, epoch, steps):
        self.epoch, self.read, self.made = epoch, None, []
        path = self.path(epoch)
        if not path.exists():
            return
        try:
            held = load_checkpoint(path)["state_dict"]  # {"<step>": its answers}
        except CheckpointError as error:  # a damaged file: the answers are computed again
            self.drop(str(error))
            return
        if sorted(held) != sorted(map(str, range(steps))):
            self.drop(f"{path} holds {len(held)} batches of answers, not this run's {steps}")
            return
        self.read = [held[str(step)] for step in range(steps)]
        self.epochs_read += 1
        if self.epochs_read == 1:
            self.log.info(f"- Teacher answers read from {self.folder} (made by an earlier student "
                          "of this teacher with these batches; each epoch checked on its first batch)")

    @staticmethod
    def matches(fresh, kept):
        return fresh.dtype == kept.dtype and torch.equal(fresh.detach().cpu(), kept)

    def write(self, epoch):
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self.path(epoch).exists():
                answers = {str(step): made.cpu() for step, made in enumerate(self.made)}
                save_checkpoint(self.path(epoch), {"state_dict": answers, "epoch": epoch})
        except (OSError, CheckpointError) as error:
            self.drop(f"{self.folder} takes no files ({getattr(error, 'strerror', None) or error})")
        self.made = []

    def drop(self, why):
        self.log.warning(f"warning: teacher_cache: {why}; this run computes every answer itself")
        self.off, self.read, self.made = True, None, []
