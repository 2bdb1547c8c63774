"""Train a nasty teacher: accurate, but its soft outputs mislead any student that distils from it.

    python train_nasty.py --save_path experiments/CIFAR10/kd_nasty_resnet18/nasty_resnet18

Besides the keys of train_scratch.py, params.json names the frozen adversarial (normal)
network, `adversarial_model` and its checkpoint `adversarial_resume`, and the loss
CE - weight * T^2 * KL(nasty || adversarial) with `temperature` T and `weight`.
A `method` key selects another method of methods/ that this script runs (a defence).
"""
import methods
from utils.training.cli import run_script, script_parser
from utils.training.engine import fit, prepare


def main(argv=None):
    args = script_parser(__doc__).parse_args(argv)
    fit(prepare(args, methods.TABLE, "nasty"), args.resume)


if __name__ == "__main__":
    run_script(main)
