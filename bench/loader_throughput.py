"""Images/s of our device loader + batched augmentation vs the original's torchvision pipeline.

    python bench/loader_throughput.py                     # 5000 generated CIFAR-10 images, CPU
    python bench/loader_throughput.py --device cuda --images 50000

Both read the same generated CIFAR-10 files. The reference is what the original ran:
torchvision's CIFAR10 with RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor +
Normalize in a DataLoader (batch 128, shuffled) with 0..2 worker processes. Ours holds the
uint8 split on the device and crops, flips and normalises each batch there. One epoch per
repetition, repetitions interleaved, median reported; no model runs, only the data path.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.data.augment import CropFlip  # noqa: E402
from utils.data.cifar import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    read_cifar,  # noqa: E402
)
from utils.data.fixtures import make_cifar  # noqa: E402
from utils.data.loader import DeviceLoader  # noqa: E402


def reference_loader(data_dir, batch_size, workers):
    import torchvision
    import torchvision.transforms as T

    class GeneratedCIFAR10(torchvision.datasets.CIFAR10):
        def _check_integrity(self):  # generated files have no official checksums
            return True

        def _load_meta(self):
            self.classes = [str(i) for i in range(10)]

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = GeneratedCIFAR10(str(Path(data_dir) / "data-cifar10"), train=True, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers)


def our_loader(data_dir, batch_size, device):
    split = read_cifar(data_dir, "cifar10", train=True, download=False)
    return DeviceLoader(split, batch_size, device, CIFAR_MEAN, CIFAR_STD, CropFlip(4, True),
                        shuffle=True)


def epoch_rate(loader, device):
    """Images/s of one full pass; each batch is moved to `device` as training would."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(loader.epoch + 1)
    start, count = time.perf_counter(), 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        count += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as data_dir:
        make_cifar(data_dir, "cifar10", args.images, 100)
        loaders = {f"torchvision DataLoader, {w} workers": reference_loader(data_dir, args.batch_size, w)
                   for w in args.workers}
        loaders[f"ours (device loader on {device})"] = our_loader(data_dir, args.batch_size, device)
        rates = {name: [] for name in loaders}
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
            for name, loader in loaders.items():
                rates[name].append(epoch_rate(loader, device))
    ours = statistics.median(rates[list(loaders)[-1]])
    print(f"{args.images} CIFAR-10 images, batch {args.batch_size}, median of {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'pipeline':<40} {'images/s':>10} {'ours is':>9}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<40} {rate:>10.0f} {ours / rate:>8.1f}x")


if __name__ == "__main__":
    main()
