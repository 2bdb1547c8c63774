"""The ceiling of a training step with no input pipeline, and where its time goes.

    python bench/step_profile.py --model net            # CPU, fp32, batch 128
    python bench/step_profile.py --model preresnet20 --steps 20

Trains --model (the original's optimizer, fp32, switches off) for --steps steps on ONE fixed
random CIFAR-size batch, after --warmup untimed steps, and prints images/s: what a training step
costs when loading, augmenting and copying images cost nothing, so the most that a faster input
pipeline can give. Then torch.profiler over the same steps: the operators with the largest share of
self CPU (or CUDA) time. The machine's numerics fingerprint heads the output.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nets  # noqa: E402
from nets.registry import optimizer_of  # noqa: E402
from utils.base.provenance import fingerprint_text, numerics  # noqa: E402
from utils.training.networks import make_optimizer  # noqa: E402


def build(args, device):
    options = {"num_channels": 32, "dropout_rate": 0.0} if args.model == "net" else {}
    torch.manual_seed(0)
    model = nets.build_model(args.model, 10, **options).to(device).train()
    # the published learning rates: Adam 1e-3 (net, mlp), SGD 0.1; a diverging step is no measure
    optimizer = make_optimizer(args.model, list(model.parameters()),
                               1e-3 if optimizer_of(args.model) == "adam" else 0.1)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    return model, optimizer, images, labels


def steps(model, optimizer, images, labels, count, device):
    for _ in range(count):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="net")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=8, help="operators listed")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"numerics: {fingerprint_text(numerics(device))}; {args.model}, batch {args.batch_size}, "
          f"optimizer {optimizer_of(args.model)}, fp32")
    model, optimizer, images, labels = build(args, device)
    steps(model, optimizer, images, labels, args.warmup, device)
    started = time.perf_counter()
    steps(model, optimizer, images, labels, args.steps, device)
    seconds = time.perf_counter() - started
    print(f"fixed random batch: {args.steps} steps in {seconds:.2f} s = "
          f"{args.steps * args.batch_size / seconds:,.0f} images/s")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        steps(model, optimizer, images, labels, args.steps, device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    # the profiler names a GPU's time 'device' time (self_cuda_time_total is gone from it)
    field = "self_device_time_total" if kind == "cuda" else "self_cpu_time_total"
    events = [e for e in profiler.key_averages() if getattr(e, field) > 0]
    total = sum(getattr(e, field) for e in events)
    events.sort(key=lambda e: getattr(e, field), reverse=True)
    print(f"self {kind} time by operator ({total / 1e6:.2f} s profiled):")
    for event in events[:args.top]:
        share = getattr(event, field) / total
        print(f"  {100 * share:5.1f}%  {event.key}")


if __name__ == "__main__":
    main()
