"""What every entry script shares: its command line, device choice, seeding, logging, exit codes.

    parser = script_parser(__doc__)
    args = parser.parse_args()
    device = select_device(args, params)

`run_script(main)` turns a `NastyError` into one line on stderr and its exit code, so
a user's mistake never ends in a traceback, and makes SIGTERM (what SLURM, Kubernetes and `kill`
send) stop a run as Ctrl-C does, with exit status 143.
"""
import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import logging.handlers
import os
import random
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .distributed import SINGLE
from .errors import ConfigError, Interrupted, NastyError

LOGGER_NAME = "nasty"


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


def select_device(args, params, world=SINGLE):
    """CPU or one CUDA device; only an explicit request that cannot be met is an error.

    Under torchrun each process takes the GPU numbered by its LOCAL_RANK.
    """
    if args.gpu_id and len(args.gpu_id) > 1:
        ids = " ".join(map(str, args.gpu_id))
        raise ConfigError(f"--gpu_id {ids}: several GPUs are used through torchrun "
                          f"(DistributedDataParallel), not DataParallel: CUDA_VISIBLE_DEVICES="
                          f"{ids.replace(' ', ',')} torchrun --nproc_per_node={len(args.gpu_id)} "
                          f"{Path(sys.argv[0]).name} --save_path {args.save_path}")
    if world.distributed and args.gpu_id is not None:
        raise ConfigError("--gpu_id does not go with torchrun: each process uses the GPU of its "
                          "LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES")
    wants_cuda = args.device == "cuda" or args.gpu_id is not None
    if args.device == "cpu" and args.gpu_id is not None:
        raise ConfigError("--device cpu and --gpu_id contradict each other")
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested (--device cuda or --gpu_id) but this machine has "
                          "no usable CUDA device")
    index = args.gpu_id[0] if args.gpu_id is not None else world.local_rank if world.distributed else None
    # params.cuda: 1 means "a GPU if there is one", as in the original
    use_cuda = wants_cuda or (args.device == "auto" and params.cuda and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if not 0 <= index < torch.cuda.device_count():
        what = f"--gpu_id {index}" if args.gpu_id is not None else f"LOCAL_RANK {index}"
        raise ConfigError(f"{what}: no such GPU (this machine has {torch.cuda.device_count()})")
    return torch.device("cuda", index)


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def setup_logging(quiet=False):
    """Console logging now; file lines wait in memory until `attach_log_file` (so a run refused
    during setup leaves an existing training.log untouched). `quiet` (ranks other than 0 under
    torchrun): warnings only, which keeps one copy of each line on the console."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):  # a second run in the same process logs afresh
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    logger.addHandler(logging.handlers.MemoryHandler(capacity=10 ** 6, flushLevel=logging.CRITICAL + 1))
    return logger


def attach_log_file(logger, save_path):
    """Append to `<save_path>/training.log` from now on, starting with the buffered setup lines."""
    file_handler = logging.FileHandler(Path(save_path) / "training.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s:%(levelname)s: %(message)s"))
    for handler in list(logger.handlers):
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.setTarget(file_handler)
            handler.flush()
            logger.removeHandler(handler)
            handler.close()
    logger.addHandler(file_handler)


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
    if not distributed.active():
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


PARENT_ENV = "NASTY_TEACHER_DRIVER_PID"  # set by reproduce.py for the children it starts
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
    world = distributed.launched_world()
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


class RunLock:
    """One training process per run folder: an exclusive flock on `<save_path>/.lock`.

    The kernel drops the lock when its process dies, even by SIGKILL, so a stale file from
    a killed run never blocks a new one; the file holds the owner's pid for the message.
    A run refused after taking the lock (a resume checkpoint that does not fit) leaves the
    folder as it found it: unless `keep()` was called (the run has started writing), leaving
    removes the file when this process created it, else puts its earlier bytes back.
    """

    def __init__(self, save_path):
        self.path = Path(save_path) / ".lock"
        self.fd = None
        self.created, self.previous, self.kept = False, b"", False

    def __enter__(self):
        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise NastyError(f"{self.path.parent}: another process (pid {owner}) is training in "
                                 "this folder; wait for it or stop it first") from None
            if self._still_the_file(fd):
                break
            os.close(fd)  # its owner removed it before we locked it: lock the file there now
        self.created, self.kept = created, False
        self.previous = b"" if created else _read_all(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def _open(self):
        """(descriptor, whether this call created the file)."""
        while True:
            with contextlib.suppress(FileExistsError):
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            try:
                return os.open(self.path, os.O_RDWR), False
            except FileNotFoundError:
                continue  # removed in between by the process that held it

    def _still_the_file(self, fd):
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def keep(self):
        """The run writes into the folder from now on: the lock file stays when it ends."""
        self.kept = True

    def __exit__(self, *exc):
        if not self.kept:  # still holding the flock, so no other process can be using the file
            if self.created:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, self.previous, 0)
        os.close(self.fd)  # closing releases the flock
        self.fd = None


def _read_all(fd):
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
