"""Carrying out a plan (repro/pipeline.py): each run with the real training script, in order.

    outcomes = execute(plan, SubprocessRunner(plan.base, ["--device", "cpu"]), Progress())
    outcomes[("baseline/preresnet20", None)].state        # "done", "ran", "failed" or "skipped"

Each run is a child process (`python train_*.py --save_path RUN --resume auto`), so a crash or
an out-of-memory kill takes down one stage, not the driver. Its output is appended to
`RUN/reproduce.log`, and each attempt's wall time to `RUN/reproduce.jsonl`. A run that fails
stops only the runs that need its checkpoint; everything else still runs.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import NamedTuple, Optional

from utils.errors import Interrupted  # noqa: F401 (reproduce.py's Ctrl-C error too)
from utils.tracking import read_jsonl
from utils.checkpoint import load_checkpoint
from .pipeline import PROJECT_ROOT, changed_keys, run_status, write_run_config

LOG_NAME = "reproduce.log"
ATTEMPTS_NAME = "reproduce.jsonl"
STOP_WAIT = 60  # seconds a child gets after Ctrl-C to write its checkpoint and exit


class Outcome(NamedTuple):
    state: str                         # done (earlier), ran, failed, skipped
    exit_code: Optional[int] = None
    seconds: Optional[float] = None    # wall time of this invocation's attempt
    log: Optional[str] = None
    message: str = ""                  # failed: the script's error line; skipped: why


def execute(plan, runner, progress):
    """Run every run of `plan` that is not finished; {run.key: Outcome}."""
    outcomes = {}
    progress.begin(len(plan.runs))
    for position, run in enumerate(plan.runs, 1):
        progress.at(position, run)
        outcome = execute_one(plan, run, runner, progress, outcomes)
        outcomes[run.key] = outcome
        progress.end(run, outcome)
    return outcomes


def execute_one(plan, run, runner, progress, outcomes):
    parent = plan.parent_key(run)
    if parent is not None and outcomes[parent].state in ("failed", "skipped"):
        if (run.folder / "params.json").is_file() and run_status(run).state == "done":
            return Outcome("done")  # finished before: its numbers stay in the table
        name = run.parent_run.label
        return Outcome("skipped", message=f"needs {name}, which {outcomes[parent].state}")
    if run.generated:
        write_run_config(run, plan.base)
    status = run_status(run)
    if status.state == "done":
        return Outcome("done")
    if status.state == "changed":  # never overwrite a finished run with other settings silently
        changes = "; ".join(changed_keys(run, load_checkpoint(run.folder / "last_model.tar")))
        return Outcome("failed", message=f"{run.folder} was {changes}: delete its last_model.tar "
                       "to retrain it, or use --sweep, which trains in folders of its own")
    progress.start(run, status)
    return runner(run, status, progress)


def exit_text(code):
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class SubprocessRunner:
    """Runs a stage's training script in a child process started in `base`."""

    def __init__(self, base, flags=(), nproc=1):
        self.base, self.flags, self.nproc = base, list(flags), nproc

    def command(self, run):
        # nproc > 1: the same script under torchrun on this machine's GPUs (or CPU processes)
        launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}"]
                    if self.nproc > 1 else [])
        return [sys.executable, *launcher, str(PROJECT_ROOT / run.stage.method.script_file),
                "--save_path", str(run.folder), "--resume", "auto", *self.flags,
                *[f"--set={key}={json.dumps(value)}" for key, value in run.overrides.items()]]

    def __call__(self, run, status, progress):
        command, log_path = self.command(run), run.folder / LOG_NAME
        started, code, error = time.time(), None, ""
        try:
            code, error = self.follow(command, log_path, progress)
        finally:  # an interrupted attempt's time counts too
            record_attempt(run.folder, command, started, code)
        seconds = time.time() - started
        if code == 0:
            return Outcome("ran", 0, seconds, str(log_path))
        return Outcome("failed", code, seconds, str(log_path), error)

    def follow(self, command, log_path, progress):
        """Run `command`, its output to `log_path` and to `progress`; (exit code, error line):
        the last `error: ...` line the scripts print, else the last line (a traceback's)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # lines as they come, for the progress line
        with open(log_path, "a", encoding="utf-8", buffering=1) as log:  # line by line: readable live
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} in {self.base}: "
                      f"{shlex.join(command)}\n")
            child = subprocess.Popen(command, cwd=self.base, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
            error, last = "", ""
            try:
                for line in child.stdout:
                    log.write(line)
                    last = line.strip() or last
                    error = line.strip() if line.startswith("error:") else error
                    progress.output(line)
                return child.wait(), error or last
            except KeyboardInterrupt:
                stop_child(child)
                log.write(f"==== interrupted ({exit_text(child.returncode)})\n")
                raise Interrupted(f"interrupted during {command[command.index('--save_path') + 1]}; "
                                  "run the same command again: finished runs are skipped and "
                                  "this one resumes from its last epoch") from None


def stop_child(child):
    """After Ctrl-C (which the child got too): let it save its epoch and exit, then make sure."""
    try:
        child.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def record_attempt(folder, command, started, code):
    row = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "seconds": round(time.time() - started, 3), "exit_code": code,
           "command": shlex.join(command)}
    with open(folder / ATTEMPTS_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_attempts(folder):
    """Rows of `folder/reproduce.jsonl`."""
    return read_jsonl(folder / ATTEMPTS_NAME)
