"""Test helper run under torchrun: train_scratch's run, recording every rank's weights after each step.

    torchrun --nproc_per_node=2 tests/ddp_probe.py --save_path DIR

Writes DIR/probe_rank<R>.pt: a list, one flat float64 vector of all parameters and buffers per
optimizer step, so a test can compare the ranks (and a single-process run) step by step; and
DIR/probe_grads_rank<R>.pt: the gradients the step used (after DDP's averaging), one flat vector
of all parameters per step.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import methods  # noqa: E402
from utils.training.cli import run_script, script_parser  # noqa: E402
from utils.training.engine import fit, prepare  # noqa: E402


def flat_state(model):
    return torch.cat([t.detach().double().flatten() for t in model.state_dict().values()])


def flat_grads(model):
    return torch.cat([p.grad.detach().double().flatten() for p in model.parameters()])


def main(argv=None):
    args = script_parser(__doc__).parse_args(argv)
    run = prepare(args, methods.TABLE, "scratch")
    steps, grads, step = [], [], run.optimizer.step

    def recording_step(*a, **k):
        grads.append(flat_grads(run.model))
        result = step(*a, **k)
        steps.append(flat_state(run.model))
        return result

    run.optimizer.step = recording_step
    fit(run, args.resume)
    torch.save(steps, Path(args.save_path) / f"probe_rank{run.world.rank}.pt")
    torch.save(grads, Path(args.save_path) / f"probe_grads_rank{run.world.rank}.pt")


if __name__ == "__main__":
    run_script(main)
