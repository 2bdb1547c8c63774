"""Training images/s: the original's pipeline vs ours (faithful) vs ours (--fast), side by side.

    python bench/throughput.py --model net --mode scratch              # CPU, 5000 images
    python bench/throughput.py --model resnet18 --mode kd --student net --device cuda --batch_size 512

All three train one epoch at a time on the same generated CIFAR-10 files, interleaved, and
the median of --repeats epochs is reported with the ratio to the reference:
  (a) reference: what the original does, written here: torchvision CIFAR10 with PIL
      RandomCrop + RandomHorizontalFlip + ToTensor + Normalize in a DataLoader with
      --workers processes, fp32, deterministic cuDNN, `.item()` of the loss every batch;
  (b) ours, faithful: the engine's train_epoch with the device loader, switches off;
  (c) ours, --fast: the same with the switches that --fast picks for the device.
For kd the frozen teacher is --model and the trained student --student; for nasty the
trained and the adversarial network are both --model (random weights: speed only).
"""
import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loader_throughput import reference_loader  # noqa: E402

from methods import params_from_dict  # noqa: E402
from utils.base.world import SINGLE  # noqa: E402
from utils.data.fixtures import make_cifar  # noqa: E402
from utils.data.loader import build_loaders  # noqa: E402
from utils.training import engine, networks  # noqa: E402
from utils.training.device import seed_everything  # noqa: E402
from utils.training.speed import Precision, fast_settings, maybe_compile  # noqa: E402

NET_OPTIONS = {"num_channels": 32, "dropout_rate": 0.0}


def config(args, data_dir, mode, extra=None):
    trained = args.student if mode == "kd" else args.model
    values = {"model_name": trained, "learning_rate": 0.1, "schedule": [999], "gamma": 0.1,
              "batch_size": args.batch_size, "num_epochs": 1, "num_workers": args.workers,
              "augmentation": 1, "cuda": 1, "dataset": "cifar10", "data_dir": str(data_dir),
              **NET_OPTIONS, **(extra or {})}
    if mode == "kd":
        values.update(teacher_model=args.model, teacher_resume="unused", temperature=4, alpha=0.9)
    if mode == "nasty":
        values.update(adversarial_model=args.model, adversarial_resume="unused", temperature=4,
                      weight=0.04)
    return params_from_dict(values, mode)


class Ours:
    """The engine's training epoch on the device loader, for given switches."""

    def __init__(self, args, data_dir, mode, device, switches):
        params = config(args, data_dir, mode, switches)
        seed_everything(0, params.deterministic)
        train_loader, _ = build_loaders(params, device)
        model = networks.build_network(params, params.model_name, device)
        method = params.method_entry
        # random weights for the frozen network: speed only
        frozen = {spec.role: networks.freeze(networks.build_network(params, args.model, device),
                                             params.compile) for spec in method.frozen}
        objective = method.build(params, frozen).to(device)
        optimizer = networks.make_optimizer(params.model_name,
                                            [*model.parameters(), *objective.parameters()],
                                            params.learning_rate)
        compiled = maybe_compile(model, params.compile)
        self.run = engine.TrainingRun(params, device, None, None, model, compiled, compiled, objective,
                                      optimizer, Precision(params.amp, device), train_loader, None,
                                      SINGLE)
        self.epoch = 0

    def train_epoch(self):
        engine.train_epoch(self.run, self.epoch)
        self.epoch += 1
        return self.run.train_loader.num_samples


class Reference:
    """The original's loop: DataLoader batches moved per step, fp32, loss.item() every batch."""

    def __init__(self, args, data_dir, mode, device):
        self.loader = reference_loader(data_dir, args.batch_size, args.workers)
        trained = args.student if mode == "kd" else args.model
        self.model = _build(trained, device)
        self.other = _build(args.model, device).eval() if mode != "scratch" else None
        self.optimizer = networks.make_optimizer(trained, self.model.parameters(), 0.1)
        self.mode, self.device = mode, device

    def loss(self, images, labels):
        out = self.model(images)
        if self.mode == "scratch":
            return nn.CrossEntropyLoss()(out, labels)
        with torch.no_grad():
            other = self.other(images)
        kl = nn.KLDivLoss(reduction="batchmean")
        if self.mode == "kd":
            return kl(F.log_softmax(out / 4, 1), F.softmax(other / 4, 1)) * (0.9 * 16) + \
                nn.CrossEntropyLoss()(out, labels) * 0.1
        adversarial = kl(F.log_softmax(other / 4, 1), F.softmax(out / 4, 1)) * 16
        return nn.CrossEntropyLoss()(out, labels) - 0.04 * adversarial + 100.0

    def train_epoch(self):
        self.model.train()
        seen, running = 0, 0.0
        for images, labels in self.loader:
            images, labels = images.to(self.device), labels.to(self.device)
            loss = self.loss(images, labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            running += loss.item()  # the original's RunningAverage: a host sync per batch
            seen += len(labels)
        return seen


def _build(name, device):
    values = {"model_name": name, "learning_rate": 0.1, "schedule": [999], "gamma": 0.1,
              "batch_size": 2, "num_epochs": 1, "dataset": "cifar10", **NET_OPTIONS}
    return networks.build_network(params_from_dict(values, "scratch"), name, device)


def settle(seconds=1.0):
    """Untimed pause: the reference's DataLoader workers finish exiting before the next timing
    starts (on 2 cores their teardown otherwise lands in the next pipeline's epoch)."""
    gc.collect()
    time.sleep(seconds)


def measure(pipelines, repeats, device):
    rates = {name: [] for name in pipelines}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        for name, pipeline in pipelines.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            count = pipeline.train_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(count / (time.perf_counter() - start))
            settle()
    return {name: statistics.median(values) for name, values in rates.items()}


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="net", help="trained network (kd: the teacher)")
    parser.add_argument("--student", default="net", help="kd only: the trained student")
    parser.add_argument("--mode", choices=("scratch", "nasty", "kd"), default="scratch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (compile)")
    return parser.parse_args()


def main():
    args = parse()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as data_dir:
        make_cifar(data_dir, "cifar10", args.images, 100)
        fast = fast_settings(device)
        pipelines = {f"reference ({args.workers} workers, fp32, .item())":
                     Reference(args, data_dir, args.mode, device),
                     "ours, faithful": Ours(args, data_dir, args.mode, device, {}),
                     "ours, --fast": Ours(args, data_dir, args.mode, device, fast)}
        for _ in range(args.warmup):
            for pipeline in pipelines.values():
                pipeline.train_epoch()
                settle()
        rates = measure(pipelines, args.repeats, device)
    reference = rates[next(iter(rates))]
    what = f"{args.mode} {args.model}" + (f" -> {args.student}" if args.mode == "kd" else "")
    print(f"{what}, {device.type}, batch {args.batch_size}, {args.images} images, median of "
          f"{args.repeats}; torch {torch.__version__}; --fast = {fast}")
    print(f"{'pipeline':<36} {'images/s':>9} {'epoch s':>8} {'vs ref':>7}")
    for name, rate in rates.items():
        print(f"{name:<36} {rate:>9.0f} {args.images / rate:>8.2f} {rate / reference:>6.2f}x")


if __name__ == "__main__":
    main()
