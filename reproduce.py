"""From configs to the paper's table: train every stage of a tree of experiments in order, then
write results.md, results.json and the figures into the tree.

    python reproduce.py experiments/Digits                 # about 4 minutes on a 2-core CPU
    python reproduce.py experiments/CIFAR10 --dry-run      # the plan: order, what is done, what resumes
    python reproduce.py experiments/Digits --seeds 0 1 2   # every stage per seed, in <stage>/seed_<s>/
    python reproduce.py experiments/Digits --seeds 0 1 2 --jobs 2        # two stages at a time
    python reproduce.py experiments/CIFAR10 --jobs 4 --gpus 0,1,2,3      # a stage per GPU
    python reproduce.py experiments/CIFAR10 --nproc 4      # every stage on 4 GPUs (torchrun)
    python reproduce.py experiments/Digits --set num_epochs=5          # a key, where a method has it
    python reproduce.py experiments/Digits --sweep weight=0.02,0.04,0.06,0.08   # the chain per value
    python reproduce.py experiments/CIFAR100 --launcher slurm --partition gpu --gpus-per-stage 1
                                                           # every stage a SLURM job (repro/slurm.py)

Every params.json below the folder is a stage, trained by the script its keys call for
(adversarial_resume: train_nasty.py, teacher_resume: train_kd.py, else train_scratch.py) after the
stage whose checkpoint it reads (a `method` key names another method of methods/). With --jobs N,
up to N stages train at once, each as soon as the checkpoint it reads exists (default on a CPU:
one per core); every stage gets --threads intra-op threads (default 1) whatever N is, so N never
changes a number. Finished runs
are skipped and started ones resume, so the same command continues an interrupted reproduction. A stage that fails is reported with its log and
stops only the stages that need it; the exit status is then 1.
"""
import argparse
import os
import sys
from pathlib import Path

from repro import slurm
from repro.figures import add_figures
from repro.pipeline import describe_plan, make_plan
from repro.progress import Progress, clock
from repro.report import collect, write_report
from repro.runner import Interrupted, Outcome, Result, SubprocessRunner, execute
from repro.schedule import chain_seconds, estimate, lower_bound, start_order
from repro.sweep import collect_sweep, sweep_plan, write_sweep_report
from utils.base.errors import ConfigError, NastyError
from utils.training.cli import OneLineParser, add_set_flag, run_script


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a folder of experiment configs (params.json files below it)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="run every stage once per seed, in <stage>/seed_<s>/ (default: each "
                             "config's own seed, in the config's folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--no-figures", action="store_true",
                        help="write the tables only (no figures, no teacher comparison)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="passed to every script")
    parser.add_argument("--data_dir", help="data root, passed to every script")
    parser.add_argument("--fast", action="store_true", help="passed to every script (speed switches)")
    add_set_flag(parser, "every config whose method has the key")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="train the stages whose method has KEY, and the stages that need "
                             "them, once per value in <folder>/sweep_<KEY>/; the table and plot "
                             "go there (see repro/sweep.py)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train every stage with N processes of this machine under torchrun "
                             "(one per GPU; batch_size stays the global batch)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="train up to N stages at once (independent stages and seeds); default: "
                             "one per GPU group of --gpus, else 1 where the stages use CUDA, else "
                             "the CPU cores // --threads. N never changes a number")
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="intra-op threads of every stage (OMP_NUM_THREADS; default 1). The "
                             "count changes results bit for bit, so it is fixed, not cores // N")
    parser.add_argument("--gpus", type=gpu_list, metavar="LIST",
                        help="GPUs to share out, e.g. 0,1,2,3, numbered as this process sees them "
                             "(under CUDA_VISIBLE_DEVICES=4,5,6,7, 0 is GPU 4): each running stage "
                             "gets --nproc of them (CUDA_VISIBLE_DEVICES); more jobs than that "
                             "share them")
    parser.add_argument("--order", choices=("critical", "plan"), default="critical",
                        help="which ready stage a free job starts: the one with the longest chain "
                             "of work behind it (default; estimated from the stages' timed runs, "
                             "else their networks and epochs), or the first in the plan. Never "
                             "changes a number")
    parser.add_argument("--no-fork", action="store_true",
                        help="start every stage as a fresh Python process. By default the CPU "
                             "stages of a Linux run are forked from one process that imported "
                             "torch once (about 5 s of CPU less per stage; the same numbers)")
    slurm.add_arguments(parser)
    return parser.parse_args(argv)


def gpu_list(text):
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of GPU "
                                         "numbers, e.g. 0,1,2,3") from None
    if min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"{text!r}: give each GPU number (0 or more) once")
    return gpus


def default_jobs(args, cuda_count):
    """--jobs when not given: a stage per GPU group of --gpus; one at a time where the stages train
    on CUDA (their memory); on a CPU one per core, each with --threads threads."""
    if args.gpus:
        return max(1, len(args.gpus) // args.nproc)
    if args.nproc > 1 or (args.device != "cpu" and cuda_count > 0):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // args.threads)


def check_parallel(args, cuda_count=None):
    """--jobs, --threads, --gpus and --nproc, checked together before anything runs; fills in the
    default --jobs."""
    if cuda_count is None:
        import torch  # only here: the plan itself needs no CUDA
        cuda_count = torch.cuda.device_count()
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads), ("--nproc", args.nproc)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: give 1 or more")
    if args.jobs is None:
        args.jobs = default_jobs(args, cuda_count)
    args.fork = forks(args, cuda_count)
    if args.gpus is None:
        if args.nproc > 1 and args.jobs > 1:
            raise ConfigError(f"--nproc {args.nproc} with --jobs {args.jobs} needs --gpus: which "
                              "GPUs each stage's processes use (e.g. --gpus 0,1,2,3)")
        return
    if args.device == "cpu":
        raise ConfigError("--gpus with --device cpu: leave out one of them")
    missing = [g for g in args.gpus if g >= cuda_count]
    if missing:
        raise ConfigError(missing_gpu_error(args.gpus, missing[0], cuda_count))
    if len(args.gpus) < args.nproc:
        raise ConfigError(f"--nproc {args.nproc} needs at least {args.nproc} GPUs in --gpus, "
                          f"which names {len(args.gpus)}")


def forks(args, cuda_count):
    """Whether the stages are forked from a warm process (repro/forkserver.py): on Linux, one
    process per stage, on the CPU (a CUDA context does not survive a fork), unless --no-fork."""
    on_cpu = args.device == "cpu" or (cuda_count == 0 and not args.gpus)
    return (sys.platform.startswith("linux") and on_cpu and args.nproc == 1
            and not getattr(args, "no_fork", False))


def missing_gpu_error(gpus, missing, cuda_count, environ=None):
    """Why --gpus names a GPU this process cannot see; under a scheduler's CUDA_VISIBLE_DEVICES,
    that --gpus counts from 0 among the GPUs it lists (as CUDA numbers them)."""
    listed = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    where = (f" (--gpus numbers the GPUs of CUDA_VISIBLE_DEVICES={listed} from 0)"
             if listed is not None else "")
    if not cuda_count:
        return "--gpus: this machine has no CUDA GPU" + where
    return (f"--gpus {','.join(map(str, gpus))}: this machine has {cuda_count} CUDA GPU(s) "
            f"(0 to {cuda_count - 1}), so GPU {missing} does not exist{where}")


def script_flags(args):
    """The flags every training script gets besides --save_path and --resume auto."""
    flags = ["--device", args.device] if args.device else []
    flags += ["--data_dir", args.data_dir] if args.data_dir else []
    return flags + (["--fast"] if args.fast else [])


def main(argv=None):
    args = parse(argv)
    if args.data_dir:  # the scripts run in the plan's base folder, not necessarily here
        args.data_dir = str(Path(args.data_dir).resolve())
    slurm.check_launcher_flags(args)
    if args.launcher == "slurm":
        options = slurm.options_from(args, script_flags(args))
    else:
        check_parallel(args)
    plan = make_plan(args.folder, args.seeds, args.set)
    if args.sweep:
        plan = sweep_plan(plan, args.sweep, args.set)
    print(describe_plan(plan), flush=True)
    if args.launcher == "slurm":
        return on_slurm(plan, options, args)
    print(f"Up to {args.jobs} stage(s) at a time, {args.threads} intra-op thread(s) each", flush=True)
    order = run_order(plan, args)
    if args.dry_run:
        return
    try:
        runner = SubprocessRunner(plan.base, script_flags(args), args.nproc, args.threads, args.gpus,
                                  args.jobs, fork=args.fork)
        outcomes = execute(plan, runner, Progress(), order)  # up to runner.jobs (args.jobs) at once
        written = report_sweep(plan, outcomes, args) if plan.sweep else report(plan, outcomes, args)
    except KeyboardInterrupt:  # outside a script (those are handled by the runner)
        raise Interrupted("interrupted; run the same command again to continue") from None
    print("Written: " + ", ".join(map(str, written)))
    check_outcomes(outcomes)


def on_slurm(plan, options, args):
    """Every run a SLURM job (repro/slurm.py); the table once every run has finished."""
    finished = slurm.launch(plan, options, dry_run=args.dry_run, wait=args.wait,
                            poll=args.poll or 30.0, out=lambda line: print(line, flush=True))
    if finished:
        outcomes = {run.key: Outcome(Result.DONE) for run in plan.runs}
        written = report_sweep(plan, outcomes, args) if plan.sweep else report(plan, outcomes, args)
        print("Written: " + ", ".join(map(str, written)))


def run_order(plan, args):
    """The order free jobs take ready runs in (--order), with a line on the work it faces."""
    if args.jobs <= 1 or args.order == "plan":
        return list(plan.runs)
    work = estimate(plan)
    if work.timed and any(work.seconds.values()):
        print(f"Free jobs start the ready stage with the most work behind it: about "
              f"{clock(sum(work.seconds.values()))} of work left, the longest chain "
              f"{clock(max(chain_seconds(plan, work.seconds).values()))}, so no order ends before "
              f"{clock(lower_bound(plan, work.seconds, args.jobs))} with {args.jobs} jobs "
              "(estimated from the stages' timed runs)", flush=True)
    return start_order(plan, args.jobs, work.seconds)


def report(plan, outcomes, args):
    results = collect(plan, outcomes)
    if not args.no_figures:
        add_figures(plan, results, args.data_dir)
    print("\n" + write_report(plan, results), flush=True)
    return [plan.root / "results.md", plan.root / "results.json",
            *(plan.root / name for table in results["groups"] + results.get("matrices", [])
              for name in table["figures"])]


def report_sweep(plan, outcomes, args):
    results = collect_sweep(plan, outcomes)
    print("\n" + write_sweep_report(plan, results, draw=not args.no_figures), flush=True)
    folder = plan.sweep.folder
    return [folder / "results.md", folder / "results.json", *(folder / n for n in results["figures"])]


def check_outcomes(outcomes):
    failed = sum(o.state == Result.FAILED for o in outcomes.values())
    skipped = sum(o.state == Result.SKIPPED for o in outcomes.values())
    if failed:
        raise NastyError(f"{failed} run(s) failed and {skipped} that need them were skipped; the "
                         "table holds the rest. Fix the cause and run the same command again")


if __name__ == "__main__":
    run_script(main)
