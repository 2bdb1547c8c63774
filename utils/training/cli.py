"""What every entry script shares: its command line, device choice, seeding, logging, exit codes.

    parser = script_parser(__doc__)
    args = parser.parse_args()
    device = select_device(args, params)

`run_script(main)` turns a `NastyError` into one line on stderr and its exit code, so
a user's mistake never ends in a traceback, and makes SIGTERM (what SLURM, Kubernetes and `kill`
send) stop a run as Ctrl-C does, with exit status 143.
"""
import argparse
import ctypes
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import torch

from utils.base.errors import ConfigError, Interrupted, NastyError
from utils.base.process import PARENT_ENV
from utils.base.world import active, launched_world
from utils.training import distributed


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ...`, exit 2) like every other error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_assignment(text):
    """`KEY=VALUE` of --set: VALUE as JSON when it is JSON (0.06, [10, 20], true), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --set weight=0.06)")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


class SetAction(argparse.Action):
    """--set KEY=VALUE, repeatable, into one dict (the last value of a key wins, as in a file)."""

    def __call__(self, parser, namespace, value, option_string=None):
        values = dict(getattr(namespace, self.dest, None) or {})
        values[value[0]] = value[1]
        setattr(namespace, self.dest, values)


def add_set_flag(parser, what="params.json"):
    parser.add_argument("--set", action=SetAction, type=parse_assignment, default={},
                        metavar="KEY=VALUE", help=f"override a key of {what} (repeatable); "
                        "checked by the same schema; the effective params are logged and saved")


def script_parser(doc):
    """The flags every training script takes (the original's, plus --device and --data_dir)."""
    parser = OneLineParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save_path", required=True,
                        help="run folder: reads params.json, writes training.log, metrics.jsonl, "
                             "best_model.tar, last_model.tar and tensorboard scalars")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue from a checkpoint (ours: weights, optimizer, epoch, best "
                             "accuracy; the original's: weights and epoch, fresh optimizer)")
    parser.add_argument("--gpu_id", type=int, nargs="+", default=None, metavar="N",
                        help="which GPU to use (the original's flag); one id")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when params.json says cuda: 1 and one exists (default)")
    parser.add_argument("--fast", action="store_true",
                        help="the speed switches recommended for the device (bf16, channels-last, "
                             "compile on a recent GPU); overrides those keys of params.json")
    parser.add_argument("--data_dir", default=None,
                        help="data root, overriding data_dir of params.json (default: data)")
    add_set_flag(parser)
    return parser


def check_save_path(save_path):
    """The run folder, which must exist and take new files (probed with a temporary file)."""
    folder = Path(save_path)
    if not folder.is_dir():
        raise ConfigError(f"--save_path {save_path}: no such folder (it must hold params.json)")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise ConfigError(f"--save_path {save_path}: cannot write there ({exc.strerror or exc})") from None
    return folder


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a run the same way."""

    signal_name = "SIGTERM"
    exit_code = 128 + signal.SIGTERM  # 143, as a shell reports a process that SIGTERM ended


_received = {"signal": None}  # the stop signal this process got, if any


def _on_sigterm(signum, frame):
    _received["signal"] = signum
    if not active():
        raise Terminated()
    # under torchrun the ranks stop together at a step they all check (stop_requested), so
    # that none is left waiting in a collective for a rank that has gone


def stop_requested(device):
    """Under torchrun: whether any rank got SIGTERM (every rank calls it at the same step)."""
    flag = torch.tensor(int(_received["signal"] is not None), device=device)
    return bool(distributed.all_sum(flag).item())


def stopped_by(interruption):
    """' by SIGTERM' for a Terminated, '' for Ctrl-C: the words of the error line."""
    name = getattr(interruption, "signal_name", None)
    return f" by {name}" if name else ""


def interruption_error(message, interruption):
    """The Interrupted error of a stop by Ctrl-C (exit 130) or SIGTERM (exit 143)."""
    error = Interrupted(message)
    error.exit_code = getattr(interruption, "exit_code", Interrupted.exit_code)
    return error


PR_SET_PDEATHSIG = 1


def stop_with_parent():
    """A child of reproduce.py gets SIGTERM (which stops a run like Ctrl-C) when the thread that
    started it ends, even by SIGKILL, so no training outlives its driver. Linux only; the
    variable is removed so that this process's own children (torchrun's ranks) do not act on it."""
    pid = os.environ.pop(PARENT_ENV, None)
    if not pid or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(pid):  # the driver died before the line above: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def run_script(main, argv=None):
    """Run `main(argv)`; user errors become one line on stderr and their exit code. SIGTERM
    raises Terminated (a KeyboardInterrupt) in the main thread, as Ctrl-C does."""
    world = launched_world()
    stop_with_parent()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        main(argv)
        distributed.stop(finished=True)
    except NastyError as exc:
        where = f"rank {world.rank}: " if world.distributed else ""
        print(f"error: {where}{exc}", file=sys.stderr)
        code = exc.exit_code
        if isinstance(exc, Interrupted) and _received["signal"] is not None:
            code = 128 + _received["signal"]  # a stop that SIGTERM caused, seen by the caller
        sys.exit(code)
    except KeyboardInterrupt as stop:  # before training started or after it ended
        print(f"error: interrupted{stopped_by(stop)}", file=sys.stderr)
        sys.exit(getattr(stop, "exit_code", Interrupted.exit_code))
    finally:
        distributed.stop()
        signal.signal(signal.SIGTERM, previous)
        _received["signal"] = None


