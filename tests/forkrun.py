"""Run the real scripts as real processes without paying for `import torch` in each: one server
process imports the project once, then forks a child per command. Each child is a fresh copy of
that process (its own exit status, stdout, stderr, working directory and environment) that runs
the script file as `python script args` would (`__main__`, an uncaught exception printed by the
traceback module and exit status 1, SystemExit's code as the status).

    from forkrun import run_scripts
    done = run_scripts([Command(ROOT / "train_scratch.py", ["--save_path", str(run)], env=env)])
    done[0].returncode, done[0].stdout, done[0].stderr

Fork-safe: the server starts no thread before forking (it imports modules and runs nothing);
tests of signals, torchrun and timing keep their own subprocesses.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import atexit, json, logging, os, runpy, sys, traceback
sys.path.insert(0, sys.argv[1])
import torch, methods, nets, utils.training.engine  # the costly imports, once

def child(case):
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [case["script"], *case["args"]]
    sys.path[0] = os.path.dirname(case["script"])
    code = 0
    try:
        runpy.run_path(case["script"], run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter does at exit: logging's flush, ...
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(case)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


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
    """Each command's (returncode, stdout, stderr), run one after another in forked children of
    one server process; `scratch` is a folder for their captured output."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    done = []
    try:
        for index, command in enumerate(commands):
            out, err = scratch / f"{index}.out", scratch / f"{index}.err"
            case = {"script": str(command.script), "args": [str(a) for a in command.args],
                    "env": dict(os.environ if command.env is None else command.env),
                    "cwd": str(command.cwd), "stdout": str(out), "stderr": str(err)}
            server.stdin.write(json.dumps(case) + "\n")
            server.stdin.flush()
            code = json.loads(server.stdout.readline())
            done.append(Done(code, out.read_text(), err.read_text()))
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    return done
