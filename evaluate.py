"""Evaluate a trained checkpoint on the test split, and compare it with a second network.

    python evaluate.py --save_path experiments/Digits/baseline/preresnet20
    python evaluate.py --checkpoint teacher.tar --model net --dataset digits --set num_channels=4
    python evaluate.py --save_path experiments/Digits/kd_nasty_preresnet20/nasty_preresnet20 \
        --against experiments/Digits/baseline/preresnet20/best_model.tar --json

With --save_path the run's params.json names the network and the data set, and DIR/best_model.tar
holds the weights (--checkpoint PATH: another file of that run, e.g. DIR/last_model.tar). Without
a run folder, --checkpoint, --model and --dataset say the same (--set KEY=VALUE for the network's
options, e.g. num_channels of `net`). Printed: the exact top-1 accuracy (correct / total), the
top-5 accuracy where the data set has 100 classes or more, the mean cross-entropy per image, the
accuracy of every class and the number of test images, in fp32.

--against PATH (a checkpoint of a network of the same data set; --against_model NAME when it is
not the first one's network) adds its accuracy, the mean KL(first || second) of the two softmax
outputs at --temperature T (default: the run's temperature if its params have one, else 4) and the
percentage of test images on which their argmax agrees: with a nasty teacher first and its
normal teacher second, the numbers of reproduce.py's teacher comparison, over the whole test split.
"""
import argparse
import json
import math
from pathlib import Path

import methods
from methods import load_params
from utils.base.checkpoint import check_file
from utils.base.errors import ConfigError
from utils.data.loader import build_test_loader
from utils.training.cli import OneLineParser, add_set_flag, run_script
from utils.training.device import select_device
from utils.training.engine import EVAL_BATCH
from utils.training.evaluation import classification_metrics, compare_outputs, predict
from utils.training.networks import load_frozen
from utils.training.params import COMMON, evaluation_params

DEFAULT_TEMPERATURE = 4.0
# keys every params.json needs that an evaluation does not use: what --model/--dataset fill in
PER_LINE = 5  # classes per line of the text report


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save_path", metavar="DIR",
                        help="a run folder: its params.json, and DIR/best_model.tar unless --checkpoint")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="the checkpoint to evaluate (with --save_path: another file of the run)")
    parser.add_argument("--model", metavar="NAME", help="its network, without --save_path")
    parser.add_argument("--dataset", metavar="NAME", help="its data set, without --save_path")
    parser.add_argument("--against", metavar="PATH",
                        help="a second checkpoint of the same data set to compare with")
    parser.add_argument("--against_model", metavar="NAME",
                        help="the network of --against (default: the first checkpoint's)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="softmax temperature of the comparison (default: the run's, else 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when the params say cuda: 1 and one exists (default)")
    parser.add_argument("--data_dir", default=None,
                        help="data root, overriding data_dir of the params (default: data)")
    add_set_flag(parser, "the params (of --save_path, or built from --model and --dataset)")
    args = parser.parse_args(argv)
    args.gpu_id = None  # select_device's flag of the training scripts
    check_args(args)
    return args


def check_args(args):
    if args.save_path and (args.model or args.dataset):
        given = " and ".join(f for f, v in (("--model", args.model), ("--dataset", args.dataset)) if v)
        raise ConfigError(f"--save_path and {given} both given: the run folder's params.json names "
                          "the network and the data set; give either --save_path DIR or "
                          "--checkpoint PATH --model NAME --dataset NAME")
    if not args.save_path:
        missing = [f for f, v in (("--checkpoint PATH", args.checkpoint), ("--model NAME", args.model),
                                  ("--dataset NAME", args.dataset)) if not v]
        if missing:
            raise ConfigError("give --save_path DIR (a run folder), or --checkpoint PATH --model NAME "
                              f"--dataset NAME (missing: {', '.join(missing)})")
    if args.against_model and not args.against:
        raise ConfigError("--against_model names the network of --against PATH, which is not given")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature {args.temperature:g}: must be a number > 0")


def first_params(args):
    """The params of the checkpoint evaluated: the run's, or built from --model and --dataset."""
    overrides = {"data_dir": args.data_dir, **args.set}
    if args.save_path:
        return load_params(args.save_path, overrides=overrides)
    values = {"model_name": args.model, "dataset": args.dataset,
              **{k: v for k, v in overrides.items() if v is not None}}
    return evaluation_params(values, methods.TABLE, "evaluate.py (--model, --dataset, --set)")


def against_params(params, name):
    """The params of the --against network: the first one's, with another network if named."""
    if name is None or name == params.model_name:
        return params
    shared = {key.name for key in COMMON} - {"method", "model_name"}
    values = {k: v for k, v in params.as_dict().items() if k in shared}
    return evaluation_params({**values, "model_name": name}, methods.TABLE,
                             f"--against_model {name}")


def pick_temperature(args, params):
    if args.temperature is not None:
        return args.temperature
    value = params.as_dict().get("temperature")  # also as given in a file of another method
    if value is None:
        return DEFAULT_TEMPERATURE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"temperature {value!r} of the params is not a number > 0; "
                          "give --temperature T")
    return float(value)


def evaluate_checkpoints(args):
    """The report's numbers, as one dict (what --json prints)."""
    params = first_params(args)
    checkpoint = args.checkpoint or str(Path(args.save_path) / "best_model.tar")
    for path in (checkpoint, args.against):
        if path:
            check_file(path)  # before any data is read
    other = against_params(params, args.against_model) if args.against else None
    temperature = pick_temperature(args, params) if args.against else None
    device = select_device(args, params)
    networks = [load_frozen(params, params.model_name, checkpoint, device, role="network")]
    if other is not None:
        networks.append(load_frozen(other, other.model_name, args.against, device,
                                    role="--against network"))
    test_loader = build_test_loader(params, device, max(params.batch_size or 0, EVAL_BATCH))
    logits, labels = predict(networks, test_loader)
    result = {"checkpoint": checkpoint, "model": params.model_name, "dataset": params.dataset,
              "num_classes": params.num_classes, "device": str(device),
              **classification_metrics(logits[0], labels, params.num_classes)}
    if other is not None:
        kl, agreement, _, _ = compare_outputs(logits[0], logits[1], temperature)
        second = classification_metrics(logits[1], labels, params.num_classes)
        result["against"] = {"checkpoint": args.against, "model": other.model_name,
                             **{k: second[k] for k in ("top1", "top5", "loss") if k in second},
                             "temperature": temperature, "mean_kl": kl.mean().item(),
                             "agreement": agreement}
    return result


def per_class_lines(per_class):
    cells = [f"{row['class']:>4} {'—' if row['top1'] is None else format(row['top1'], '.2f'):>6} "
             f"({row['images']})" for row in per_class]
    width = max(len(cell) for cell in cells)
    return ["  " + "  ".join(cell.ljust(width) for cell in cells[i:i + PER_LINE]).rstrip()
            for i in range(0, len(cells), PER_LINE)]


def text_report(result):
    lines = [f"checkpoint    {result['checkpoint']}",
             f"network       {result['model']} on {result['dataset']} ({result['num_classes']} "
             f"classes), evaluated on {result['device']}",
             f"test images   {result['images']}",
             f"top-1         {result['top1']:.3f} %"]
    if "top5" in result:
        lines.append(f"top-5         {result['top5']:.3f} %")
    lines.append(f"loss          {result['loss']:.4f} (mean cross-entropy per image)")
    lines.append("per class     class, top-1 % (images)")
    lines += per_class_lines(result["per_class"])
    against = result.get("against")
    if against:
        top5 = f", top-5 {against['top5']:.3f} %" if "top5" in against else ""
        lines += [f"against       {against['checkpoint']} ({against['model']}): "
                  f"top-1 {against['top1']:.3f} %{top5}, loss {against['loss']:.4f}",
                  f"  KL(first || second) at T = {against['temperature']:g}: "
                  f"{against['mean_kl']:.4f} (mean over the test images)",
                  f"  argmax agrees on {against['agreement']:.2f} % of the test images"]
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    result = evaluate_checkpoints(args)
    print(json.dumps(result) if args.json else text_report(result))
    return result


if __name__ == "__main__":
    run_script(main)
