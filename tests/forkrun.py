"""Run the real scripts as real processes without paying for `import torch` in each: forked, one
after another, from reproduce.py's warm server (repro/forkserver.py). Each child is the script run
as `python script args` would run it, with its own exit status, stdout, stderr, working directory
and environment.

    from forkrun import run_scripts
    done = run_scripts([Command(ROOT / "train_scratch.py", ["--save_path", str(run)], env=env)])
    done[0].returncode, done[0].stdout, done[0].stderr

Tests of signals, torchrun and timing keep their own subprocesses.
"""
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from repro.forkserver import ForkServer

ROOT = Path(__file__).resolve().parent.parent


class Command(NamedTuple):
    script: Path
    args: Sequence[str] = ()
    env: Optional[dict] = None       # None: this process's environment
    cwd: Path = ROOT


class Done(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_scripts(commands, scratch):
    """Each command's (returncode, stdout, stderr), run one after another; `scratch` is a folder
    for their captured output."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    server, done = ForkServer(), []
    try:
        for index, command in enumerate(commands):
            paths = scratch / f"{index}.out", scratch / f"{index}.err"
            fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for path in paths]
            try:
                child = server.spawn(command.script, command.args,
                                     os.environ if command.env is None else command.env,
                                     command.cwd, *fds)
            finally:
                for fd in fds:
                    os.close(fd)
            done.append(Done(child.wait(), *(path.read_text() for path in paths)))
    finally:
        server.close()
    return done
