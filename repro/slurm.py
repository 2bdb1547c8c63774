"""Every run of a plan as a SLURM job, submitted through submitit (reproduce.py --launcher slurm).

    python reproduce.py experiments/CIFAR100 --seeds 0 1 2 --launcher slurm --partition gpu \\
        --gpus-per-stage 1 --time 8:00:00   # submits the jobs, prints their ids, returns
    python reproduce.py experiments/CIFAR100 --seeds 0 1 2 --launcher slurm ...  # again: states
    python reproduce.py ... --launcher slurm --wait     # stays until every job ended, then the table

A run that is not finished becomes one job, after (`afterok`) the job of the run whose checkpoint
it reads. The job trains the run as the local launcher does: the stage's script with `--resume
auto` and --threads intra-op threads, its output appended to RUN/reproduce.log and each attempt to
RUN/reproduce.jsonl. Every job submitted for a run is a row of RUN/slurm.jsonl, so that a later
invocation knows it: a run whose job is queued or running is left alone; one whose job ended
without finishing it (failed, cancelled, timed out, preempted, lost with its node) is submitted
again, and so is every run that waited for it. submitit's files (the pickled job, SLURM's output)
are in RUN/slurm/.

Stops: SLURM sends USR2 `signal_delay` seconds before a job's time limit; submitit then calls
StageJob.checkpoint, which stops the script with SIGTERM (it keeps its last finished epoch) and
has submitit requeue the job, which resumes from there. A preemption that requeues
(PreemptMode=REQUEUE) sends SIGTERM, which the script takes the same way, and SLURM starts the job
again itself. A job cancelled or failed is submitted again by the next reproduce.py.

The run folders must be on a file system every node sees. With more than one node in the
partition, a tree or project folder on a local file system (ext4, xfs, tmpfs, ... as /proc/mounts
names its mount) is refused: a job on another node would find nothing there.
"""
import getpass
import json
import math
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import submitit

from utils.base.errors import ConfigError, NastyError, did_you_mean
from utils.base.schema import Word
from utils.training.tracking import read_jsonl

from .job import LOG_NAME, StageJob
from .pipeline import PROJECT_ROOT, RunState, run_status, status_text, write_run_config
from .progress import clock
from .runner import stage_command

JOBS_NAME = "slurm.jsonl"          # RUN/slurm.jsonl: one row per job submitted for the run
SUBMITIT_FOLDER = "slurm"          # RUN/slurm/: submitit's pickles and SLURM's output
# squeue's states of a job that has not ended; COMPLETED, FAILED, CANCELLED, TIMEOUT, PREEMPTED,
# NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE and a job squeue no longer knows have ended
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                         "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
                         "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"})
NEVER = "DependencyNeverSatisfied"  # a pending job whose afterok job failed: it will never start
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "tmpfs",
                               "ramfs", "devtmpfs", "overlay"})
MAX_TIMEOUTS = 20                  # requeues at a time limit per job (each resumes; preemptions are free)
DEFAULT_MINUTES = 24 * 60          # a job's time where neither --time nor the partition says
OWN_OPTIONS = {"dependency", "partition", "account", "time", "gpus-per-node", "cpus-per-task",
               "job-name", "output", "error", "signal", "nodes", "ntasks-per-node", "open-mode"}


@dataclass(frozen=True)
class SlurmOptions:
    partition: Optional[str] = None
    account: Optional[str] = None
    minutes: Optional[int] = None      # each job's time limit; None: the partition's
    gpus: int = 0                      # per stage (job)
    cpus: Optional[int] = None         # per stage; None: threads x nproc
    nproc: int = 1                     # processes per stage (torchrun inside the job)
    threads: int = 1                   # intra-op threads of every process, as locally
    sbatch: dict = field(default_factory=dict)  # further sbatch options, {name: value or True}
    flags: tuple = ()                  # what every script gets (reproduce.script_flags)
    signal_delay: int = 90             # seconds between USR2 and the time limit

    @property
    def cpus_per_stage(self):
        return self.cpus or self.threads * self.nproc


class Partition(NamedTuple):
    name: str
    nodes: int
    default_time: Optional[int]        # minutes; None: not set or unlimited
    max_time: Optional[int]
    gres: str                          # its nodes' generic resources, e.g. "gpu:a100:4"
    default: bool


class Action(Word):
    """What reproduce.py does for a run under SLURM."""
    DONE = "done"                      # finished: no job
    QUEUED = "queued"                  # its job is pending or running: left alone
    SUBMIT = "submit"                  # no job, or its job ended without finishing it
    CHANGED = "changed"                # finished with other --set values: never overwritten
    BLOCKED = "blocked"                # the run it needs is changed or blocked


class Decision(NamedTuple):
    run: Any
    action: Action
    status: Any                        # repro.pipeline.Status of its folder
    job: Optional[dict]                # its last row of slurm.jsonl
    state: str = ""                    # that job's squeue state ("" when squeue forgot it)
    reason: str = ""


# ----------------------------------------------------------------------------- options

def add_arguments(parser):
    group = parser.add_argument_group("SLURM", "with --launcher slurm (repro/slurm.py)")
    group.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local: train here (default); slurm: submit every stage as a SLURM "
                            "job (through submitit) after the jobs whose checkpoints it reads")
    group.add_argument("--partition", help="the partition of every job (default: SLURM's default)")
    group.add_argument("--account", help="the account every job is charged to")
    group.add_argument("--time", metavar="T",
                       help="each job's time limit as sbatch takes it (MINUTES, HH:MM:SS, "
                            "D-HH:MM, ...; default: the partition's default, else its limit); a "
                            "stage that needs longer is requeued and resumes")
    group.add_argument("--gpus-per-stage", type=int, metavar="G",
                       help="GPUs of each job (default: --nproc with --device cuda, else 0)")
    group.add_argument("--cpus-per-stage", type=int, metavar="C",
                       help="CPUs of each job (default: --threads x --nproc)")
    group.add_argument("--sbatch", action="append", metavar="OPTION",
                       help="another sbatch option for every job, NAME=VALUE or NAME (e.g. "
                            "qos=high, constraint=a100, exclusive); repeat for more")
    group.add_argument("--wait", action="store_true",
                       help="stay until every job has ended, printing each change; then the table")
    group.add_argument("--poll", type=float, metavar="SECONDS",
                       help="how often --wait asks squeue (default 30)")


SLURM_FLAGS = (("partition", "--partition"), ("account", "--account"), ("time", "--time"),
               ("gpus_per_stage", "--gpus-per-stage"), ("cpus_per_stage", "--cpus-per-stage"),
               ("sbatch", "--sbatch"), ("wait", "--wait"), ("poll", "--poll"))
LOCAL_FLAGS = (("jobs", "--jobs"), ("gpus", "--gpus"), ("no_fork", "--no-fork"))


def check_launcher_flags(args):
    """Flags of the other launcher are refused, not ignored."""
    if args.launcher == "local":
        given = [flag for name, flag in SLURM_FLAGS if getattr(args, name) not in (None, False)]
        if given:
            raise ConfigError(f"{given[0]} needs --launcher slurm")
        return
    given = [flag for name, flag in LOCAL_FLAGS if getattr(args, name) not in (None, False)]
    if given:
        raise ConfigError(f"{given[0]} is for --launcher local: under SLURM every stage is a job "
                          "of its own (--gpus-per-stage, --cpus-per-stage)")


def options_from(args, flags):
    """SlurmOptions from reproduce.py's arguments, checked; a bad one is one ConfigError."""
    gpus = args.gpus_per_stage
    if gpus is None:
        gpus = args.nproc if args.device == "cuda" else 0
    for flag, value, least in (("--gpus-per-stage", gpus, 0), ("--cpus-per-stage", args.cpus_per_stage, 1),
                               ("--poll", args.poll, 0.1), ("--nproc", args.nproc, 1),
                               ("--threads", args.threads, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} {value}: give {least} or more")
    if args.device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda with --gpus-per-stage 0: the jobs would have no GPU")
    if args.device == "cpu" and gpus:
        raise ConfigError(f"--gpus-per-stage {gpus} with --device cpu: leave out one of them")
    if gpus and args.nproc > gpus:
        raise ConfigError(f"--nproc {args.nproc} runs {args.nproc} processes per stage, one per "
                          f"GPU, but --gpus-per-stage {gpus} gives each job {gpus}")
    return SlurmOptions(args.partition, args.account,
                        parse_time(args.time, "--time") if args.time else None, gpus,
                        args.cpus_per_stage, args.nproc, args.threads,
                        parse_sbatch(args.sbatch or []), tuple(flags))


def parse_time(text, what):
    """Minutes (rounded up) of a time in SLURM's formats: MINUTES, MINUTES:SECONDS,
    HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if match is None:
        raise ConfigError(f"{what} {text!r}: not a SLURM time (MINUTES, HH:MM:SS, D-HH:MM, ...)")
    days, parts = match.group(1), [int(p) for p in match.group(2).split(":")]
    if days is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    else:
        total = {1: lambda m: 60 * m, 2: lambda m, s: 60 * m + s,
                 3: lambda h, m, s: 3600 * h + 60 * m + s}[len(parts)](*parts)
    if total <= 0:
        raise ConfigError(f"{what} {text!r}: give a time above zero")
    return math.ceil(total / 60)


def parse_sbatch(items):
    """{name: value} of --sbatch NAME=VALUE / NAME (True); the options reproduce.py sets itself
    are refused, with the flag that sets them."""
    options = {}
    for item in items:
        name, _, value = item.lstrip("-").partition("=")
        name = name.strip().replace("_", "-")
        if not name:
            raise ConfigError(f"--sbatch {item!r}: give NAME=VALUE or NAME, e.g. qos=high")
        if name in OWN_OPTIONS:
            raise ConfigError(f"--sbatch {item!r}: reproduce.py sets --{name} itself "
                              "(--partition, --account, --time, --gpus-per-stage, --cpus-per-stage)")
        options[name] = value if value else True
    return options


# ----------------------------------------------------------------------------- the cluster

def slurm_command(argv):
    """The output of a SLURM command; its failure is one ConfigError with its own words."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"{shlex.join(argv)} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


def read_partitions():
    """{name: Partition} from sinfo (one line per partition and node state, summed)."""
    found = {}
    for line in slurm_command(["sinfo", "--noheader", "--format=%P|%D|%L|%l|%G"]).splitlines():
        name, nodes, default_time, max_time, gres = line.strip().split("|")
        default, name = name.endswith("*"), name.rstrip("*")
        known = found.get(name)
        found[name] = Partition(name, int(nodes) + (known.nodes if known else 0),
                                sinfo_minutes(default_time), sinfo_minutes(max_time),
                                ",".join(filter(None, [known.gres if known else "",
                                                       "" if gres == "(null)" else gres])),
                                default or bool(known and known.default))
    return found


def sinfo_minutes(text):
    return None if text.strip().lower() in ("infinite", "unlimited", "n/a", "none", "") \
        else parse_time(text, "sinfo time")


def check_cluster(options, folders, which=shutil.which, mounts="/proc/mounts"):
    """The partition the jobs go to, after the checks that need the cluster: sbatch exists, the
    partition does, it has GPUs if the jobs ask for them, the folders are on a shared file system."""
    if which("sbatch") is None:
        raise ConfigError("--launcher slurm: no sbatch on this machine's PATH; run reproduce.py "
                          "where SLURM jobs are submitted (a login node)")
    partitions = read_partitions()
    if options.partition is not None:
        if options.partition not in partitions:
            raise ConfigError(f"--partition {options.partition}: SLURM has no such partition"
                              f"{did_you_mean(options.partition, partitions)} (it has: "
                              f"{', '.join(sorted(partitions))})")
        partition = partitions[options.partition]
    else:
        partition = next((p for p in partitions.values() if p.default), None)
        if partition is None:
            raise ConfigError(f"SLURM has no default partition: give --partition (one of "
                              f"{', '.join(sorted(partitions))})")
    if options.gpus and "gpu" not in partition.gres:
        raise ConfigError(f"--gpus-per-stage {options.gpus}: partition {partition.name} has no "
                          f"GPUs (its nodes' generic resources: {partition.gres or 'none'})")
    if partition.nodes > 1:
        for folder in folders:
            kind = filesystem_type(folder, mounts)
            if kind in LOCAL_FILESYSTEMS:
                raise ConfigError(f"{folder} is on a local file system ({kind}) but partition "
                                  f"{partition.name} has {partition.nodes} nodes: a job on another "
                                  "node would not see it. Put the tree and the project on a file "
                                  "system the nodes share (NFS, Lustre, GPFS, BeeGFS, ...)")
    return partition


def filesystem_type(path, mounts="/proc/mounts"):
    """The type of the file system holding `path`: that of its longest mount point in `mounts`."""
    path, best = Path(path).resolve(), ("", None)
    for line in Path(mounts).read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best[0]):
            best = (point, fields[2])
    return best[1]


def job_minutes(options, partition):
    return options.minutes or partition.default_time or partition.max_time or DEFAULT_MINUTES


def job_states():
    """{job id: (state, reason)} of this user's jobs that squeue knows, ended ones included."""
    rows = slurm_command(["squeue", "--noheader", "--states=all", f"--user={getpass.getuser()}",
                          "--format=%i|%T|%r"])
    states = {}
    for line in rows.splitlines():
        job_id, state, reason = (line.strip().split("|") + ["", ""])[:3]
        states[job_id] = (state, reason)
    return states


# ----------------------------------------------------------------------------- what to submit

def last_job(folder):
    rows = read_jsonl(Path(folder) / JOBS_NAME)
    return rows[-1] if rows else None


def decide(plan, states, known=None):
    """{run key: Decision}, parents first: each run's folder and the state of its last job.
    `known` holds earlier decisions of DONE runs, which are not read again."""
    decisions = {}
    for run in plan.runs:
        earlier = (known or {}).get(run.key)
        if earlier is not None and earlier.action == Action.DONE:
            decisions[run.key] = earlier
        else:
            decisions[run.key] = decide_run(run, decisions.get(plan.parent_key(run)), states)
    return decisions


def decide_run(run, parent, states):
    status, job = run_status(run), last_job(run.folder)
    state, reason = states.get(str(job["job_id"]), ("", "")) if job else ("", "")

    def decision(action):
        return Decision(run, action, status, job, state, reason)

    live = state in LIVE_STATES and reason != NEVER
    if status.state == RunState.DONE:  # its job may still be writing the attempt's record
        return decision(Action.QUEUED if live else Action.DONE)
    if status.state == RunState.CHANGED:
        return decision(Action.CHANGED)
    if parent is not None and parent.action in (Action.CHANGED, Action.BLOCKED):
        return decision(Action.BLOCKED)
    if live and waits_for_current(job, parent):
        return decision(Action.QUEUED)
    return decision(Action.SUBMIT)


def waits_for_current(job, parent):
    """Whether a live job waits for the job its parent run keeps (or for nothing): a job after a
    parent that is submitted again would wait for an ended job forever."""
    if parent is None or parent.action == Action.DONE:
        return True
    return parent.action == Action.QUEUED and str(job.get("after")) == str(parent.job["job_id"])


def submit_all(plan, decisions, options, minutes, submit=None):
    """Submit every SUBMIT run in plan order, after its parent's job; {run key: job id} of the
    jobs the runs now have. A live job of a run submitted again is cancelled first."""
    submit = submit or (lambda run, after: submit_run(plan, run, after, options, minutes))
    job_ids = {key: str(d.job["job_id"]) for key, d in decisions.items() if d.action == Action.QUEUED}
    for run in plan.runs:
        decision = decisions[run.key]
        if decision.action != Action.SUBMIT:
            continue
        if decision.state in LIVE_STATES:
            slurm_command(["scancel", str(decision.job["job_id"])])
        job_ids[run.key] = str(submit(run, job_ids.get(plan.parent_key(run))))
    return job_ids


def submit_run(plan, run, after, options, minutes):
    """One job for `run` (after job `after`, if any), its id recorded in RUN/slurm.jsonl."""
    if run.generated:
        write_run_config(run, plan.base)
    run.folder.mkdir(parents=True, exist_ok=True)
    command = stage_command(run, options.flags, options.nproc)
    executor = submitit.SlurmExecutor(folder=run.folder / SUBMITIT_FOLDER, max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(**job_parameters(run, after, options, minutes))
    job = executor.submit(StageJob(command, str(plan.base), str(run.folder), options.threads))
    row = {"job_id": str(job.job_id), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "after": after, "partition": options.partition, "minutes": minutes,
           "command": shlex.join(command)}
    append_row(run.folder / JOBS_NAME, row)
    return job.job_id


def job_parameters(run, after, options, minutes):
    """submitit's SlurmExecutor parameters of `run`'s job."""
    extra = dict(options.sbatch)
    if after is not None:  # a failed parent cancels its dependents rather than leaving them pending
        extra.update({"dependency": f"afterok:{after}", "kill-on-invalid-dep": "yes"})
    parameters = dict(job_name=job_name(run), time=minutes, nodes=1, ntasks_per_node=1,
                      cpus_per_task=options.cpus_per_stage, signal_delay_s=options.signal_delay,
                      stderr_to_stdout=True, additional_parameters=extra,
                      # the job's Python unpickles a StageJob: the project must be importable
                      setup=[f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}"
                             "${PYTHONPATH:+:$PYTHONPATH}"])
    if options.partition:
        parameters["partition"] = options.partition
    if options.account:
        parameters["account"] = options.account
    if options.gpus:
        parameters["gpus_per_node"] = options.gpus
    return parameters


def job_name(run):
    parts = [run.stage.name] + ([f"seed{run.seed}"] if run.seed is not None else []) + \
        ([run.variant] if run.variant else [])
    return ":".join(parts)


def append_row(path, row):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- the driver

def launch(plan, options, dry_run=False, wait=False, poll=30.0, out=print):
    """Submit a job for every run that needs one and print each run's job; with `wait`, follow
    them to the end. True when every run has finished (the table can be written)."""
    partition = check_cluster(options, [plan.root, PROJECT_ROOT])
    minutes = job_minutes(options, partition)
    decisions = decide(plan, job_states())
    job_ids = {} if dry_run else submit_all(plan, decisions, options, minutes)
    out(describe_jobs(plan, decisions, job_ids, partition, minutes, dry_run))
    if dry_run:
        return False
    if wait:  # the jobs just submitted are live now
        decisions = follow(plan, decide(plan, job_states(), known=decisions), poll, out)
    check_not_submitted(decisions)
    if all(d.action == Action.DONE for d in decisions.values()):
        return True
    if wait:
        ended = [d for d in decisions.values() if d.action != Action.DONE]
        first = ended[0]
        raise NastyError(f"{len(ended)} run(s) ended without finishing, e.g. {first.run.label} "
                         f"(job {first.job['job_id'] if first.job else '-'}: "
                         f"{(first.state or 'ended').lower()}; see {first.run.folder / LOG_NAME}); "
                         "run the same command again to submit them again")
    out("Run the same command again to see the jobs' states (and submit again what failed or "
        "was cancelled), or with --wait to stay until they end; the table is written once every "
        "run has finished")
    return False


def describe_jobs(plan, decisions, job_ids, partition, minutes, dry_run):
    """One line per run: its job, what it waits for, its state; then the counts."""
    rows, number_of = [("#", "run", "job", "after", "state")], {}
    for number, run in enumerate(plan.runs, 1):
        decision, parent = decisions[run.key], plan.parent_key(run)
        number_of[run.key] = number
        job = job_ids.get(run.key) or ("(new)" if decision.action == Action.SUBMIT else "-")
        after = job_ids.get(parent) if parent is not None else None
        if dry_run and parent is not None and decisions[parent].action == Action.SUBMIT:
            after = f"job of #{number_of[parent]}"
        rows.append((str(number), run.label, job, after or "-", state_text(decision, dry_run)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"SLURM jobs (partition {partition.name}, {clock(minutes * 60)} each"
             f"{', dry run: nothing submitted' if dry_run else ''}):"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = {action: sum(d.action == action for d in decisions.values()) for action in Action}
    verb = "to submit" if dry_run else "submitted now"
    lines.append(f"{counts[Action.SUBMIT]} job(s) {verb}, {counts[Action.QUEUED]} queued or running "
                 f"from before, {counts[Action.DONE]} of {len(plan.runs)} runs finished")
    return "\n".join(lines)


def state_text(decision, dry_run=False):
    status, state = decision.status, (decision.state or "").lower()
    epochs = f", {status.epoch}/{status.num_epochs} epochs" if status.epoch else ""
    if decision.action == Action.DONE:
        return status_text(status)
    if decision.action == Action.QUEUED:
        reason = f" ({decision.reason})" if decision.reason not in ("", "None") else ""
        return f"{state}{reason}{epochs}"
    if decision.action == Action.CHANGED:
        return "not submitted: " + status_text(status)
    if decision.action == Action.BLOCKED:
        return "not submitted: the run it needs is not submitted"
    verb = "to submit" if dry_run else "submitted"
    if decision.job is None:
        return f"{verb}{epochs}"
    return f"{verb} again (job {decision.job['job_id']}: {state or 'ended'}){epochs}"


def check_not_submitted(decisions):
    changed = [d for d in decisions.values() if d.action == Action.CHANGED]
    if changed:
        raise NastyError(f"{len(changed)} run(s) were trained with other values of the --set keys "
                         f"and were not submitted, e.g. {changed[0].run.folder}: delete its "
                         "last_model.tar to train it again, or use --sweep")


def follow(plan, decisions, poll, out):
    """Ask squeue every `poll` seconds and print what changed, until no run's job is live."""
    started, seen = time.time(), {key: view(d) for key, d in decisions.items()}
    while any(d.action == Action.QUEUED for d in decisions.values()):
        time.sleep(poll)
        decisions = decide(plan, job_states(), known=decisions)
        changes = [d for key, d in decisions.items() if view(d) != seen[key]]
        for decision in changes:
            seen[decision.run.key] = view(decision)
            job = f"job {decision.job['job_id']}: " if decision.job else ""
            text = (state_text(decision) if decision.action != Action.SUBMIT else
                    f"ended without finishing ({(decision.state or 'gone from squeue').lower()})")
            out(f"[{clock(time.time() - started)}] {decision.run.label}: {job}{text}")
        if changes:
            counts = {a: sum(d.action == a for d in decisions.values()) for a in Action}
            running = sum(d.state == "RUNNING" for d in decisions.values() if d.action == Action.QUEUED)
            out(f"[{clock(time.time() - started)}] {counts[Action.DONE]} of {len(plan.runs)} runs "
                f"finished, {running} running, {counts[Action.QUEUED] - running} waiting")
    return decisions


def view(decision):
    """What --wait reports a change of."""
    return decision.action, decision.state, decision.status.epoch
