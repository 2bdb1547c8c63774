"""Run the real scripts as real processes without paying for `import torch` in each: forked from
reproduce.py's warm server (repro/forkserver.py), one per test process. Each child is the script
run as `python script args` would run it, with its own exit status, stdout, stderr, working
directory, environment and session.

    from forkrun import Command, run_scripts, start
    done = run_scripts([Command(ROOT / "train_scratch.py", ["--save_path", str(run)], env=env)])
    done[0].returncode, done[0].stdout, done[0].stderr
    child = start(ROOT / "train_scratch.py", ["--save_path", str(run)])   # .pid .poll() .wait()

Tests of torchrun, of the terminal's signals (Ctrl-C) and of timing keep their own subprocesses.
"""
import atexit
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from repro.forkserver import ForkServer

ROOT = Path(__file__).resolve().parent.parent
_SERVER = []  # this test process's server, started on first use


class Command(NamedTuple):
    script: Path
    args: Sequence[str] = ()
    env: Optional[dict] = None       # None: this process's environment
    cwd: Path = ROOT


class Done(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def server():
    if not _SERVER or _SERVER[0].process.poll() is not None:
        _SERVER[:] = [ForkServer()]
        atexit.register(_SERVER[0].close)
    return _SERVER[0]


def start(script, args=(), env=None, cwd=ROOT, stdout=os.devnull, stderr=os.devnull):
    """The forked child running `script args`, its output into the files `stdout` and `stderr`."""
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for path in (stdout, stderr)]
    try:
        return server().spawn(script, args, os.environ if env is None else env, cwd, *fds)
    finally:
        for fd in fds:
            os.close(fd)


def run_scripts(commands, scratch=None):
    """Each command's (returncode, stdout, stderr), run one after another; `scratch`: a folder
    for their captured output (default: a temporary one)."""
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(scratch or temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        done = []
        for index, command in enumerate(commands):
            paths = scratch / f"{index}.out", scratch / f"{index}.err"
            child = start(command.script, command.args, command.env, command.cwd, *paths)
            done.append(Done(child.wait(), *(path.read_text() for path in paths)))
    return done
