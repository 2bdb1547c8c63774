"""Train a nasty teacher: accurate, but its soft outputs mislead any student that distils from it.

    python train_nasty.py --save_path experiments/CIFAR10/kd_nasty_resnet18/nasty_resnet18

Besides the keys of train_scratch.py, params.json names the frozen adversarial (normal)
network, `adversarial_model` and its checkpoint `adversarial_resume`, and the loss
CE - weight * T^2 * KL(nasty || adversarial) with `temperature` T and `weight`.
"""
from utils.engine import fit, frozen_network, nasty_objective, prepare
from utils.runtime import run_script, script_parser


def main(argv=None):
    args = script_parser(__doc__).parse_args(argv)
    run = prepare(args, mode="nasty")
    params = run.params
    adversarial = frozen_network(run, params.adversarial_model, params.adversarial_resume,
                                 "adversarial")
    fit(run, nasty_objective(adversarial, T=params.temperature, weight=params.weight), args.resume)


if __name__ == "__main__":
    run_script(main)
