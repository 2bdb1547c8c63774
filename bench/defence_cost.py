"""What a teacher defence costs per batch: the teacher's forward, and the forward plus its answer.

    python bench/defence_cost.py --teacher preresnet20 --classes 10 --batch_size 64    # Digits
    python bench/defence_cost.py --teacher resnet18 --classes 100 --batch_size 128     # CIFAR-100

For each defence of methods/ (at its default keys; MAD also with its argmax-preserving oracle)
it times, on one fixed random batch after untimed warm-up batches, the median over --repeats of
the teacher's forward and of the forward plus the defence's answer under inference mode, as a
student run queries its teacher, and prints both in ms with the ratio. A student's training step
adds its own forward and backward on top. The machine's numerics fingerprint heads the output.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import methods  # noqa: E402
from methods.base import defence_names, get_defence  # noqa: E402
from utils.base.provenance import fingerprint_text, numerics  # noqa: E402
from utils.training.networks import build_network, freeze  # noqa: E402

# the settings a row measures: the defence and the keys it changes from their defaults
SETTINGS = [("logits", {}), ("sparse", {"sparse_ratio": 0.2}), ("reverse", {}),
            ("reverse_sigmoid", {}), ("mad", {}), ("mad", {"mad_argmax": 1})]


def student_params(args, defence, keys):
    values = {"model_name": "net", "num_channels": 4, "dropout_rate": 0.0, "learning_rate": 1e-3,
              "schedule": [999], "gamma": 0.1, "batch_size": args.batch_size, "num_epochs": 1,
              "num_workers": 0, "augmentation": 1, "cuda": 0,
              "dataset": "cifar100" if args.classes == 100 else "cifar10",
              "teacher_model": args.teacher, "teacher_resume": "t.tar", "temperature": 4, "alpha": 0.9,
              "teacher_output": defence, **keys}
    return methods.params_from_dict(values, "kd")


def median_ms(call, repeats, warmup):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="preresnet20")
    parser.add_argument("--classes", type=int, default=10, choices=(10, 100))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    print(fingerprint_text(numerics(torch.device("cpu"))))
    torch.manual_seed(0)
    teacher = freeze(build_network(student_params(args, "logits", {}), args.teacher))
    images = torch.randn(args.batch_size, 3, 32, 32)
    with torch.inference_mode():
        plain = median_ms(lambda: teacher(images), args.repeats, args.warmup)
        print(f"teacher {args.teacher}, {args.classes} classes, batch {args.batch_size}: forward "
              f"{plain:.1f} ms (median of {args.repeats})")
        for defence, keys in SETTINGS:
            assert defence in defence_names()
            params = student_params(args, defence, keys)
            answer = get_defence(defence).answers(params, teacher)
            answered = median_ms(lambda: answer(images, teacher(images)), args.repeats, args.warmup)
            label = get_defence(defence).row_label(params)
            print(f"| {label} | {plain:.1f} | {answered:.1f} | {answered / plain:.2f}x |")


if __name__ == "__main__":
    main()
