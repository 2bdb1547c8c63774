"""One attempt at a run as a child process, in what every launcher shares and what a SLURM job
runs (StageJob). It imports no torch: a SLURM job's own Python only starts the stage's script.

    job = StageJob(command, base, folder, threads)   # pickled by submitit (repro/slurm.py)
    job()                                            # in the job: the script, to its end

Each attempt's output is appended to RUN/reproduce.log and its wall time and exit to
RUN/reproduce.jsonl (the rows repro/schedule.py and the report read).
"""
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import submitit

from utils.base.errors import NastyError
from utils.base.process import PARENT_ENV

ATTEMPTS_NAME = "reproduce.jsonl"  # one row per attempt at a run (record_attempt)
LOG_NAME = "reproduce.log"
STOP_WAIT = 60  # seconds a child gets after Ctrl-C (or a job after USR2) to write its checkpoint


def child_environment(threads, environ=None):
    """A stage's variables: line-by-line output, `threads` intra-op threads (the count changes
    numbers bit for bit, so it never follows the cores) and this process as its driver."""
    env = dict(os.environ if environ is None else environ, PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env[PARENT_ENV] = str(os.getpid())
    return env


def exit_text(code):
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def record_attempt(folder, command, started, code, env=None):
    env = env or {}
    row = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "seconds": round(time.time() - started, 3), "exit_code": code,
           "command": shlex.join(command), "threads": env.get("OMP_NUM_THREADS"),
           "gpus": env.get("CUDA_VISIBLE_DEVICES")}
    with open(folder / ATTEMPTS_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


class StageJob:
    """What a job runs (submitit pickles it into RUN/slurm/): the run's script, as the local
    launcher starts it, output appended to RUN/reproduce.log, the attempt to RUN/reproduce.jsonl.
    submitit calls `checkpoint` when SLURM signals a time limit or a preemption."""

    def __init__(self, command, base, folder, threads):
        self.command, self.base, self.folder, self.threads = list(command), base, folder, threads
        self.child, self.code = None, None

    def __call__(self):
        folder, env, started = Path(self.folder), child_environment(self.threads), time.time()
        try:
            with open(folder / LOG_NAME, "a", encoding="utf-8") as log:
                log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} in {self.base}: "
                          f"{shlex.join(self.command)}\n==== SLURM job "
                          f"{os.environ.get('SLURM_JOB_ID', '?')} on {socket.gethostname()}\n")
                log.flush()
                # the child ignores USR2, which SLURM sends to every process of the job: the
                # job's own handler stops the script with SIGTERM, which it takes cleanly
                self.child = subprocess.Popen(self.command, cwd=self.base, env=env, stdout=log,
                                              stderr=subprocess.STDOUT, preexec_fn=ignore_usr2)
                while self.code is None:  # polled: the signal handler must be free to reap it
                    self.code = self.child.poll()
                    time.sleep(0.2)
        finally:
            record_attempt(folder, self.command, started, self.code, env)
        if self.code != 0:
            raise NastyError(f"the stage's script ended with {exit_text(self.code)}; see "
                             f"{folder / LOG_NAME}")
        return self.code

    def checkpoint(self):
        """Stop the script with SIGTERM (it saves its last finished epoch; SIGKILL after
        STOP_WAIT seconds) and hand submitit the same job to requeue: it resumes from there."""
        if self.child is not None and self.code is None:
            self.code = stop_child(self.child.pid, STOP_WAIT)
        return submitit.helpers.DelayedSubmission(
            StageJob(self.command, self.base, self.folder, self.threads))


def ignore_usr2():
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def stop_child(pid, seconds):
    """SIGTERM to `pid`, reaped here (not through Popen, whose lock the interrupted main code may
    hold); SIGKILL after `seconds`. Its exit code, or None when it was reaped already."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return None
