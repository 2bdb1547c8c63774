"""Distil a student from a frozen teacher (normal or nasty) by knowledge distillation.

    python train_kd.py --save_path experiments/CIFAR10/kd_nasty_resnet18/preresnet20

Besides the keys of train_scratch.py, params.json names the teacher, `teacher_model` and
its checkpoint `teacher_resume` (or --teacher_resume PATH, the original's override), and
the loss alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE with `temperature` T and
`alpha`. The teacher's test accuracy is logged before training, as the original did.
A `method` key selects another method of methods/ that this script runs (a student strategy).
"""
import methods
from utils.training.cli import run_script, script_parser
from utils.training.engine import fit, prepare


def main(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument("--teacher_resume", default=None, metavar="PATH",
                        help="teacher checkpoint, overriding teacher_resume of params.json")
    args = parser.parse_args(argv)
    overrides = {"teacher_resume": args.teacher_resume} if args.teacher_resume else {}
    fit(prepare(args, methods.TABLE, "kd", overrides=overrides), args.resume)


if __name__ == "__main__":
    run_script(main)
