"""Distil a student from a frozen teacher (normal or nasty) by knowledge distillation.

    python train_kd.py --save_path experiments/CIFAR10/kd_nasty_resnet18/preresnet20

Besides the keys of train_scratch.py, params.json names the teacher, `teacher_model` and
its checkpoint `teacher_resume` (or --teacher_resume PATH, the original's override), and
the loss alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE with `temperature` T and
`alpha`. The teacher's test accuracy is logged before training, as the original did.
"""
from utils.engine import evaluate, fit, frozen_network, kd_objective, prepare
from utils.runtime import run_script, script_parser


def main(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument("--teacher_resume", default=None, metavar="PATH",
                        help="teacher checkpoint, overriding teacher_resume of params.json")
    args = parser.parse_args(argv)
    overrides = {"teacher_resume": args.teacher_resume} if args.teacher_resume else {}
    run = prepare(args, mode="kd", overrides=overrides)
    params = run.params
    teacher = frozen_network(run, params.teacher_model, params.teacher_resume, "teacher")
    metrics = evaluate(teacher, run.test_loader, run.precision)
    run.log.info(f"- Teacher Model Eval metrics : acc: {metrics['acc']:05.3f} ; "
                 f"loss: {metrics['loss']:05.3f}")
    fit(run, kd_objective(teacher, T=params.temperature, alpha=params.alpha), args.resume)


if __name__ == "__main__":
    run_script(main)
