"""Carrying out a plan (repro/pipeline.py): each run with the real training script, up to `jobs` at once.

    outcomes = execute(plan, SubprocessRunner(plan.base, ["--device", "cpu"], jobs=2), Progress())
    outcomes[("baseline/preresnet20", None)].state        # a Result: done, ran, failed or skipped

Each run is a child process (`python train_*.py --save_path RUN --resume auto`; forked from a warm
process on the CPU, repro/forkserver.py), so a crash or an out-of-memory kill takes down one stage,
not the driver. Its output is appended to
`RUN/reproduce.log`, and each attempt's wall time to `RUN/reproduce.jsonl`. A run that fails
stops only the runs that need its checkpoint; everything else still runs.

With `jobs` > 1 a run starts as soon as the run whose checkpoint it reads has finished and a job
is free, taking among such runs the one with the longest chain of work behind it
(repro/schedule.py; `jobs=1` keeps the plan's order). Children run
in sessions of their own: Ctrl-C or SIGTERM reaches reproduce.py alone, which hands the same
signal to every running child once, lets each save its epoch, and stops; a child whose driver dies
by SIGKILL gets SIGTERM from the kernel (utils/training/cli.stop_with_parent).
"""
import itertools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import NamedTuple, Optional

from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError, Interrupted
from utils.base.schema import Word
from utils.training.cli import Terminated

from .forkserver import ForkServer
from .job import LOG_NAME, STOP_WAIT, child_environment, exit_text, record_attempt
from .pipeline import (
    PROJECT_ROOT,
    RunState,
    changed_keys,
    run_status,
    write_run_config,
)
from .schedule import start_order

TORCHRUN = PROJECT_ROOT / "repro" / "launch.py"  # torchrun that ends with reproduce.py


class Result(Word):
    """What became of a run in one reproduce.py invocation."""
    DONE = "done"                      # finished earlier: not run again
    RAN = "ran"                        # trained now, to its last epoch
    FAILED = "failed"                  # its script failed, or it was refused before it started
    SKIPPED = "skipped"                # the run it needs failed or was skipped
    NOT_RUN = "not run"                # in results.json: a run this invocation did not reach


class Outcome(NamedTuple):
    state: Result
    exit_code: Optional[int] = None
    seconds: Optional[float] = None    # wall time of this invocation's attempt
    log: Optional[str] = None
    message: str = ""                  # failed: the script's error line; skipped: why


def execute(plan, runner, progress, order=None):
    """Run every run of `plan` that is not finished, up to `runner.jobs` at once (the one source of
    the job count: the runner owns the slots, GPUs included); {run.key: Outcome}. Free jobs take
    the ready runs in `order` (default: repro.schedule.start_order); each keeps its plan position."""
    jobs = runner.jobs
    position = {run.key: i for i, run in enumerate(plan.runs, 1)}
    order = start_order(plan, jobs) if order is None else order
    outcomes, waiting, running = {}, [(position[run.key], run) for run in order], {}
    progress.begin(len(plan.runs))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
        try:
            while waiting or running:
                start_ready(plan, runner, progress, pool, (outcomes, waiting, running), jobs)
                if running:  # a timeout keeps Ctrl-C prompt while the children work
                    finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in finished:
                        position, run = running.pop(future)
                        outcomes[run.key] = future.result()
                        progress.end(position, run, outcomes[run.key])
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (runtime.Terminated)
            labels = [run.label for _, run in running.values()]
            stop_children(runner, signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
            raise Interrupted(f"interrupted{' during ' + ', '.join(labels) if labels else ''}; run "
                              "the same command again: finished runs are skipped and the "
                              "interrupted ones resume from their last epoch") from None
        except BaseException:  # the driver's own error: no training is left running behind it
            stop_children(runner, signal.SIGTERM)
            raise
        finally:
            if hasattr(runner, "close"):
                runner.close()
    return outcomes


def start_ready(plan, runner, progress, pool, state, jobs):
    """Settle or start, in `waiting`'s order, every run whose parent has an outcome, while jobs
    are free."""
    outcomes, waiting, running = state
    settled = True
    while settled:  # a run settled without training may make the next one ready
        settled = False
        for item in list(waiting):
            position, run = item
            parent = plan.parent_key(run)
            if parent is not None and parent not in outcomes:
                continue
            if len(running) >= jobs:
                return
            waiting.remove(item)
            outcome, status = settle(plan, run, outcomes)
            if outcome is not None:
                outcomes[run.key] = outcome
                progress.end(position, run, outcome)
                settled = True
                break
            progress.start(position, run, status)
            running[pool.submit(runner, run, status, progress)] = (position, run)


def settle(plan, run, outcomes):
    """(Outcome, None) for a run that needs no training now, else (None, its Status)."""
    parent = plan.parent_key(run)
    if parent is not None and outcomes[parent].state in (Result.FAILED, Result.SKIPPED):
        if (run.folder / "params.json").is_file() and run_status(run).state == RunState.DONE:
            return Outcome(Result.DONE), None  # finished before: its numbers stay in the table
        name = run.parent_run.label
        return Outcome(Result.SKIPPED, message=f"needs {name}, which {outcomes[parent].state}"), None
    if run.generated:
        write_run_config(run, plan.base)
    status = run_status(run)
    if status.state == RunState.DONE:
        return Outcome(Result.DONE), None
    if status.state == RunState.CHANGED:  # never overwrite a finished run with other settings silently
        changes = "; ".join(changed_keys(run, load_checkpoint(run.folder / "last_model.tar")))
        return Outcome(Result.FAILED, message=f"{run.folder} was {changes}: delete its last_model.tar "
                       "to retrain it, or use --sweep, which trains in folders of its own"), None
    return None, status


def stop_children(runner, signum):
    """Hand `signum` (the one that stopped reproduce.py) to the running children; wait for them."""
    if hasattr(runner, "stop_all"):
        runner.stop_all(signum)


def stage_command(run, flags=(), nproc=1):
    """The command that trains `run`: its method's script, resuming what its folder holds; with
    nproc > 1 the same script under torchrun on one machine's GPUs (or CPU processes)."""
    launcher = ([str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [])
    return [sys.executable, *launcher, str(PROJECT_ROOT / run.stage.method.script_file),
            "--save_path", str(run.folder), "--resume", "auto", *flags,
            *[f"--set={key}={json.dumps(value)}" for key, value in run.overrides.items()]]


class SubprocessRunner:
    """Runs a stage's training script in a child process started in `base`.

    Every child gets `threads` intra-op threads, whatever the number of jobs: the thread count
    changes how sums are split and so the numbers, bit for bit. With `gpus` (numbered as this
    process sees them, see `visible_gpus`), each of the `jobs` slots owns `nproc` of them
    (CUDA_VISIBLE_DEVICES); more slots than GPU groups share them. With `fork` (CPU stages of one
    process each), the children are forked from a warm process (repro/forkserver.py) that the
    first stage starts and `close` ends.
    """

    def __init__(self, base, flags=(), nproc=1, threads=1, gpus=None, jobs=1, fork=False):
        self.base, self.flags, self.nproc, self.threads = base, list(flags), nproc, threads
        self.fork, self.server = fork and nproc == 1, None
        self.groups = gpu_groups(visible_gpus(gpus), nproc) if gpus else None
        self.jobs, self.slots = jobs, queue.SimpleQueue()
        for slot in range(jobs):
            self.slots.put(slot)
        self.children, self.lock, self.stopping = set(), threading.Lock(), False

    def command(self, run):
        return stage_command(run, self.flags, self.nproc)

    def environment(self, slot):
        """The child's variables: line-by-line output, its threads, its GPUs, its driver's pid."""
        env = child_environment(self.threads)
        if self.groups:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.groups[slot % len(self.groups)]))
        return env

    def __call__(self, run, status, progress):
        command, log_path, slot = self.command(run), run.folder / LOG_NAME, self.slots.get()
        env, started, code, error = self.environment(slot), time.time(), None, ""
        try:
            code, error = self.follow(command, env, log_path, lambda line: progress.output(run, line))
        finally:  # an interrupted attempt's time counts too
            self.slots.put(slot)
            record_attempt(run.folder, command, started, code, env)
        seconds = time.time() - started
        if code == 0:
            return Outcome(Result.RAN, 0, seconds, str(log_path))
        return Outcome(Result.FAILED, code, seconds, str(log_path), error)

    def follow(self, command, env, log_path, output):
        """Run `command`, its output to `log_path` and to `output`; (exit code, error line):
        the last `error: ...` line the scripts print, else the last line (a traceback's)."""
        with open(log_path, "a", encoding="utf-8", buffering=1) as log:  # line by line: readable live
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} in {self.base}: "
                      f"{shlex.join(command)}\n")
            child = self.spawn(command, env)
            if child is None:
                log.write("==== not started: reproduce.py is stopping\n")
                return None, "not started: reproduce.py is stopping"
            log.write(f"==== pid {child.pid}{' (forked)' if self.fork else ''}\n")
            error, last = "", ""
            try:
                for line in child.stdout:
                    log.write(line)
                    last = line.strip() or last
                    error = line.strip() if line.startswith("error:") else error
                    output(line)
                code = child.wait()
            finally:
                with self.lock:
                    self.children.discard(child)
            if self.stopping:
                log.write(f"==== interrupted ({exit_text(code)})\n")
            return code, error or last

    def spawn(self, command, env):
        """Start a child in a session of its own (a terminal's Ctrl-C reaches reproduce.py only,
        which forwards it once); None once stop_all has begun."""
        with self.lock:
            if self.stopping:
                return None
            child = self.start(command, env)
            self.children.add(child)
            return child

    def start(self, command, env):
        if not self.fork:
            return subprocess.Popen(command, cwd=self.base, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
        if self.server is None:  # its own threads: the stages' (OpenMP reads them at start)
            self.server = ForkServer(env)
        return self.server.spawn(command[1], command[2:], env, self.base)

    def close(self):
        """End the fork server, once no stage runs."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def stop_all(self, signum):
        """Send `signum` to every running child once, give them STOP_WAIT seconds together to save
        their epoch and exit, then kill what is left (their whole process group: torchrun's ranks)."""
        with self.lock:
            self.stopping = True
            children = list(self.children)
        for child in children:
            signal_group(child, signum)
        deadline = time.time() + STOP_WAIT
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                signal_group(child, signal.SIGKILL)
                child.wait()


def signal_group(child, signum):
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        return  # already gone


def visible_gpus(indices, environ=None):
    """The CUDA_VISIBLE_DEVICES entries that name GPUs `indices` of this process, as strings.

    CUDA numbers a process's GPUs 0, 1, ... in the order of its CUDA_VISIBLE_DEVICES, whose
    entries are GPU numbers or UUIDs (GPU-..., MIG-...). A child handed the indices themselves
    would read them as the machine's GPUs: under a scheduler's CUDA_VISIBLE_DEVICES=4,5,6,7,
    index 0 must reach the child as 4. Without the variable the indices are the machine's.
    """
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in indices]
    # CUDA reads the list up to its first empty entry
    entries = list(itertools.takewhile(bool, (e.strip() for e in listed.split(","))))
    missing = [index for index in indices if index >= len(entries)]
    if missing:
        raise ConfigError(f"--gpus {','.join(map(str, indices))}: CUDA_VISIBLE_DEVICES={listed} "
                          f"names {len(entries)} GPU(s) (0 to {len(entries) - 1}), so GPU "
                          f"{missing[0]} does not exist")
    return [entries[index] for index in indices]


def gpu_groups(gpus, nproc):
    """`gpus` cut into groups of `nproc`, one group per concurrent stage (round robin)."""
    return [gpus[i:i + nproc] for i in range(0, len(gpus) - nproc + 1, nproc)]
