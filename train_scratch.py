"""Train a network from scratch with cross-entropy: a normal teacher, or a baseline student.

    python train_scratch.py --save_path experiments/CIFAR10/baseline/resnet18

The run folder holds params.json (model_name, dataset, learning_rate, schedule, gamma,
batch_size, num_epochs, ...); training.log, metrics.jsonl, best_model.tar, last_model.tar
and tensorboard scalars are written there. `--resume DIR/last_model.tar` continues a run.
"""
from utils.engine import fit, prepare, scratch_objective
from utils.runtime import run_script, script_parser


def main(argv=None):
    args = script_parser(__doc__).parse_args(argv)
    run = prepare(args, mode="scratch")
    fit(run, scratch_objective(), args.resume)


if __name__ == "__main__":
    run_script(main)
