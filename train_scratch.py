"""Train a network from scratch with cross-entropy: a normal teacher, or a baseline student.

    python train_scratch.py --save_path experiments/CIFAR10/baseline/resnet18
    python train_scratch.py --save_path DIR --set learning_rate=0.05 --set num_epochs=10

The run folder holds params.json (model_name, dataset, learning_rate, schedule, gamma,
batch_size, num_epochs, ...); training.log, metrics.jsonl, best_model.tar, last_model.tar
and tensorboard scalars are written there. `--resume DIR/last_model.tar` continues a run.
A `method` key selects another method of methods/ that this script runs.
"""
import methods
from utils.training.cli import run_script, script_parser
from utils.training.engine import fit, prepare


def main(argv=None):
    args = script_parser(__doc__).parse_args(argv)
    fit(prepare(args, methods.TABLE, "scratch"), args.resume)


if __name__ == "__main__":
    run_script(main)
