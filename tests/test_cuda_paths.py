"""The code paths that only a GPU takes, checked on the CPU: collectives on the run's device (what
NCCL requires), --gpus under a scheduler's CUDA_VISIBLE_DEVICES, fp16 loss scaling against the
divergence watch, sync_bn and channels-last for an objective's own heads, and torch.compile with
its real backend.

What a CPU cannot show (NCCL itself, SyncBatchNorm's forward, CUDA kernels) is listed in the
docs/performance.md's speed switches.
"""
import copy
import math
import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from configs import TINY, write_config

import methods
import nets
import reproduce
import train_scratch
from methods.base import Method, Objective, Role, register
from repro.runner import SubprocessRunner, visible_gpus
from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.base.errors import ConfigError, Diverged
from utils.base.world import SINGLE, World
from utils.training import distributed, engine
from utils.training.cli import script_parser, stop_requested
from utils.training.evaluation import evaluate
from utils.training.speed import maybe_compile
from utils.training.tracking import read_metrics

META = torch.device("meta")  # a device that is not the CPU, to tell the run's device from the CPU
STEPS = math.ceil(1438 / TINY["batch_size"])  # training steps of one TINY epoch on digits


# ----------------------------------------------------------------------------- collectives

@pytest.fixture
def recorded(monkeypatch):
    """A 2-process run on device `meta` whose collectives record the device of every tensor
    they get instead of communicating; the list of those devices."""
    seen = []

    def record(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, torch.Tensor):
                    seen.append(item.device)

    for name in ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
                 "reduce_scatter_tensor", "all_to_all_single", "gather", "scatter"):
        monkeypatch.setattr(dist, name, record)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    distributed.start(World(0, 2, 0), META)  # a group already joined: start only notes the device
    yield seen
    monkeypatch.undo()
    distributed.stop()


def collective_devices(call, seen):
    """The devices `call` handed to collectives. A meta tensor has no values, so reading one
    after its collectives (`.item()`) ends the call there: that error is expected."""
    try:
        call()
    except (RuntimeError, NotImplementedError) as error:
        if "meta" not in str(error).lower():
            raise
    return list(seen)


class MetaLoader:
    """Two batches of a test split that lives on device `meta`."""
    num_samples = 8

    def __init__(self):
        self.labels = torch.zeros(8, dtype=torch.long, device=META)

    def __iter__(self):
        for _ in range(2):
            yield torch.zeros(4, 6, device=META), self.labels[:4]


def _meta_network():
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)).to(META)


def _meta_gradients():
    parameters = list(_meta_network().parameters())
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    return parameters


COLLECTIVE_CALLS = {
    "check_same_epoch": lambda: distributed.check_same_epoch(3),
    "non-finite watch": lambda: engine.NonFiniteWatch(META, ("loss",)).check(None, 0),
    "stop_requested": lambda: stop_requested(META),
    "evaluate": lambda: evaluate(_meta_network(), MetaLoader()),
    "share_buffers": lambda: distributed.share_buffers(_meta_network()),
    "average_gradients": lambda: distributed.average_gradients(_meta_gradients()),
}


@pytest.mark.parametrize("name", COLLECTIVE_CALLS)
def test_every_collective_gets_tensors_on_the_runs_device(name, recorded):
    # NCCL refuses a tensor on any other device than the process's GPU: the whole run stops
    devices = collective_devices(COLLECTIVE_CALLS[name], recorded)
    assert devices and set(devices) == {META}, f"{name}: collectives got tensors on {devices}"


def test_start_notes_the_run_device_and_stop_forgets_it():
    distributed.start(SINGLE, META)
    assert distributed.run_device() == META
    distributed.stop()
    assert distributed.run_device() == torch.device("cpu")


# ----------------------------------------------------------------------------- --gpus

@pytest.mark.parametrize("visible, gpus, nproc, expected", [
    (None, "0,1", 1, ["0", "1"]),                       # no CUDA_VISIBLE_DEVICES: the machine's GPUs
    ("4,5,6,7", "0,1", 1, ["4", "5"]),                  # a SLURM job given GPUs 4 to 7
    ("4,5,6,7", "3,1", 1, ["7", "5"]),
    ("4,5,6,7", "2,3", 2, ["6,7"]),                     # one stage on two of them under torchrun
    ("GPU-5ab1c3,MIG-77e0f2", "1", 1, ["MIG-77e0f2"]),  # UUIDs pass as they are
])
def test_gpus_are_numbered_as_the_parent_sees_them(visible, gpus, nproc, expected, tmp_path,
                                                    monkeypatch):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    count = 4 if visible is None else len(visible.split(","))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    args = reproduce.parse(["tree", "--gpus", gpus, "--nproc", str(nproc)])
    reproduce.check_parallel(args)  # validates against the parent's torch.cuda.device_count()
    runner = SubprocessRunner(tmp_path, gpus=args.gpus, nproc=args.nproc, jobs=args.jobs)
    assert [runner.environment(slot)["CUDA_VISIBLE_DEVICES"] for slot in range(args.jobs)] == expected


def test_a_gpu_the_parent_cannot_see_is_refused_with_its_numbering(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    args = reproduce.parse(["tree", "--gpus", "4"])
    with pytest.raises(ConfigError, match=r"has 4 CUDA GPU\(s\) \(0 to 3\), so GPU 4 does not exist "
                                          r"\(--gpus numbers the GPUs of CUDA_VISIBLE_DEVICES=4,5,6,7"):
        reproduce.check_parallel(args)
    # CUDA reads the list to its first empty entry; an index past it is refused, not guessed
    assert visible_gpus([0], {"CUDA_VISIBLE_DEVICES": "4,,5"}) == ["4"]
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=4,,5 names 1 GPU"):
        visible_gpus([1], {"CUDA_VISIBLE_DEVICES": "4,,5"})


# ----------------------------------------------------------------------------- fp16 and the watch

class PoisonedObjective(Objective):
    """Cross-entropy, made NaN at the third batch of every epoch (a genuinely non-finite loss)."""

    def forward(self, model, images, labels, at):
        logits = model(images)
        ce = F.cross_entropy(logits, labels)
        loss = ce + (float("nan") if at.step == 2 else 0.0)
        return logits, {"loss": loss, "ce": ce}


def _test_method(name, build, terms=()):
    if name not in methods.base.method_names():
        register(Method(name=name, script="scratch", role=Role.TEACHER, build=build,
                        summary="test only (tests/test_cuda_paths.py)", terms=terms))


class HugeScale(torch.amp.GradScaler):
    """A loss scale so large that every fp16 backward overflows (a scaler at the start of a run
    whose scale is still too high, exaggerated so that the test does not depend on the data)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "init_scale": 2.0 ** 60})


def test_fp16_overflowing_gradients_are_skipped_not_reported_as_divergence(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", HugeScale)
    folder = write_config(tmp_path / "run", amp="fp16")
    train_scratch.main(["--save_path", str(folder), "--device", "cpu"])  # no Diverged
    checkpoint = load_checkpoint(folder / "last_model.tar")
    # every step overflowed: the scaler skipped it (the optimizer never stepped) and halved its scale
    assert checkpoint["optim_dict"]["state"] == {}
    assert checkpoint["scaler"]["scale"] == 2.0 ** (60 - STEPS)
    assert math.isfinite(read_metrics(folder / "metrics.jsonl")[-1]["train_loss"])


def test_fp16_still_reports_a_loss_that_is_not_finite(tmp_path):
    _test_method("poisoned_loss", lambda params, frozen: PoisonedObjective(), ("ce",))
    folder = write_config(tmp_path / "run", amp="fp16", method="poisoned_loss")
    with pytest.raises(Diverged, match=r"non-finite loss at epoch 1, batch 3 \(term loss\)"):
        train_scratch.main(["--save_path", str(folder), "--device", "cpu"])


# ----------------------------------------------------------------------------- an objective's heads

class ConvHeadObjective(Objective):
    """Cross-entropy of the network plus that of a 3x3 convolution head on the images (a 4-d
    weight whose NCHW and NHWC layouts differ, unlike 1x1 and depthwise ones)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, model, images, labels, at):
        logits = model(images)
        ce = F.cross_entropy(logits, labels)
        return logits, {"loss": ce + F.cross_entropy(self.head(images), labels), "ce": ce}


def _prepare(folder, script):
    args = script_parser("test\n\nonly").parse_args(["--save_path", str(folder), "--device", "cpu"])
    return engine.prepare(args, methods.TABLE, script)


def _skeptical_student(tmp_path):
    teacher = tmp_path / "teacher.tar"
    save_checkpoint(teacher, {"state_dict": nets.build_model("net", 10, num_channels=4,
                                                             dropout_rate=0.0).state_dict()})
    return write_config(tmp_path / "student", method="skeptical", teacher_model="net",
                        teacher_resume=str(teacher), temperature=4, alpha=0.9, sync_bn=1)


def _norm_types(module):
    return {type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_sync_bn_converts_the_skeptical_heads_too(tmp_path, monkeypatch):
    # a 2-process run on CUDA, as far as a CPU can stand in: no process group, no DDP, and
    # SyncBatchNorm's CUDA check answered yes (its conversion replaces modules on any device)
    monkeypatch.setattr(engine, "launched_world", lambda environ=None: World(0, 2, 0))
    monkeypatch.setattr(distributed, "start", lambda world, device: None)
    monkeypatch.setattr(distributed, "wrap", lambda model, world, device: model)
    monkeypatch.setattr(distributed, "sync_bn_applies",
                        lambda world, device, enabled: bool(enabled and world.distributed))
    run = _prepare(_skeptical_student(tmp_path), "kd")
    assert _norm_types(run.model) == {nn.SyncBatchNorm}
    assert _norm_types(run.objective.heads) == {nn.SyncBatchNorm}
    frozen = _norm_types(run.objective.frozen["teacher"])
    assert frozen and nn.SyncBatchNorm not in frozen  # the frozen teacher: as it was
    trained = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in run.objective.parameters()} <= trained


def test_channels_last_applies_to_an_objectives_heads(tmp_path):
    _test_method("conv_head", lambda params, frozen: ConvHeadObjective(), ("ce",))
    run = _prepare(write_config(tmp_path / "run", method="conv_head", channels_last=1), "scratch")
    weight = run.objective.head[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    plain = _prepare(write_config(tmp_path / "plain", method="conv_head"), "scratch")
    assert plain.objective.head[0].weight.is_contiguous()


# ----------------------------------------------------------------------------- torch.compile

@pytest.mark.slow
def test_inductor_compiles_a_network_forward_and_backward_on_the_cpu():
    """The real backend (inductor, C++ through the system compiler), not a stand-in."""
    if not shutil.which(os.environ.get("CXX", "g++")):
        pytest.skip("no C++ compiler, which inductor needs on a CPU")
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0)
    compiled = maybe_compile(copy.deepcopy(eager), True)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    losses = []
    for network in (eager, compiled):
        loss = F.cross_entropy(network(images), labels)
        loss.backward()
        losses.append(loss)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured a graph: compiled code ran
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name


def test_a_pytorch_that_cannot_compile_on_this_python_is_one_line(monkeypatch):
    def refuse(model, **options):  # what torch.compile raises at once on a Python it cannot trace
        raise RuntimeError("Dynamo is not supported on Python 3.12+")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.raises(ConfigError, match=r"^compile: 1: Dynamo is not supported on Python 3\.12\+; "
                                          r"set compile to 0"):
        maybe_compile(nn.Linear(2, 2), True)
    assert maybe_compile(layer := nn.Linear(2, 2), False) is layer
