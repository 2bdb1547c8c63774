"""Wall time of a whole reproduction with `reproduce.py --jobs N`, settings side by side, and whether
the runs of equal thread counts trained the same weights bit for bit.

    python bench/jobs.py                                    # Digits, seeds 0 1 2: the BENCHMARKS.md row
    python bench/jobs.py --settings 1x2 1x1 2x1             # JOBSxTHREADS, one after the other
    python bench/jobs.py --tree experiments/Digits --seeds 0 --epochs 1 --settings 1x1 2x1  # quick
    python bench/jobs.py --settings 2x1:plan 2x1            # the ready runs in plan order, then by
                                                            # critical path (reproduce.py --order)

Each setting reproduces a fresh copy of the tree's configs (in a temporary folder, run from there so
the configs' checkpoint paths point into the copy) with `reproduce.py TREE --seeds ... --jobs J
--threads T --no-figures`, timed from start to exit, beside the lower bound no order of those
runs can beat, max(longest chain, total work / J), from the runs' own wall times
(repro/schedule.py). The machine should be otherwise idle.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repro.pipeline import make_plan  # noqa: E402 (after the path)
from repro.schedule import finished, lower_bound  # noqa: E402
from utils.base.checkpoint import load_checkpoint  # noqa: E402

SKIP = ("seed_", "sweep_")  # generated folders: not configs


def copy_configs(tree, destination):
    """The tracked params.json files of `tree` (relative to the project root) below `destination`."""
    for config in sorted((ROOT / tree).rglob("params.json")):
        relative = config.relative_to(ROOT)
        if any(part.startswith(SKIP) for part in relative.parts):
            continue
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(config, destination / relative)


def reproduce(workdir, args, jobs, threads, order):
    command = [sys.executable, str(ROOT / "reproduce.py"), args.tree, "--no-figures", "--device",
               "cpu", "--jobs", str(jobs), "--threads", str(threads), "--order", order,
               "--seeds", *map(str, args.seeds)]
    if args.epochs:
        command += ["--set", f"num_epochs={args.epochs}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds, command


def weights(workdir, tree):
    """{run folder: state_dict} of every run's last_model.tar."""
    found = {}
    for path in sorted((workdir / tree).rglob("last_model.tar")):
        found[str(path.parent.relative_to(workdir))] = load_checkpoint(path)["state_dict"]
    return found


def bound(workdir, args, jobs):
    """max(longest chain, total / jobs) of the runs' measured wall times (reproduce.jsonl)."""
    plan = make_plan(workdir / args.tree, args.seeds)
    seconds = {run.key: finished(run.folder)[0] or 0.0 for run in plan.runs}
    return lower_bound(plan, seconds, jobs)


def same_weights(a, b):
    return a.keys() == b.keys() and all(
        all(torch.equal(a[run][k], b[run][k]) for k in a[run]) for run in a)


def parse_setting(text):
    """'2x1' -> (2, 1, 'critical'); '2x1:plan' -> (2, 1, 'plan')."""
    sizes, _, order = text.lower().partition(":")
    jobs, threads = (int(part) for part in sizes.split("x"))
    return jobs, threads, order or "critical"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default="experiments/Digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="--set num_epochs for every stage (quick checks)")
    parser.add_argument("--settings", nargs="+", default=["1x2", "1x1", "2x1"], metavar="JxT",
                        help="jobs x threads per stage, ':plan' for reproduce.py --order plan; "
                             "run in this order")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="reproduce in DIR/<setting> and keep the runs and tables there")
    args = parser.parse_args()
    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as scratch:
        scratch = args.keep or scratch
        for setting in args.settings:
            jobs, threads, order = parse_setting(setting)
            workdir = Path(scratch) / setting.replace(":", "_")
            copy_configs(args.tree, workdir)
            seconds, command = reproduce(workdir, args, jobs, threads, order)
            runs[setting] = (threads, weights(workdir, args.tree))
            floor = bound(workdir, args, jobs)
            rows.append((setting, jobs, threads, order, seconds, floor, command))
            print(f"{setting}: {seconds:.0f} s (lower bound {floor:.0f} s)", flush=True)
    print_table(rows, runs, args)


def print_table(rows, runs, args):
    reference = rows[0][4]
    print(f"\n{args.tree}, seeds {' '.join(map(str, args.seeds))}; {os.cpu_count()} cores here\n")
    print("| jobs | threads per stage | order | wall time | lower bound | wall / bound "
          "| speed-up vs first row | same weights as |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for setting, jobs, threads, order, seconds, floor, _ in rows:
        twins = [other for other, (t, w) in runs.items()
                 if other != setting and t == threads and same_weights(w, runs[setting][1])]
        print(f"| {jobs} | {threads} | {order} | {seconds / 60:.1f} min ({seconds:.0f} s) | "
              f"{floor:.0f} s | {seconds / floor if floor else float('nan'):.2f} | "
              f"{reference / seconds:.2f}x | {', '.join(twins) or '—'} |")
    print("\nCommands (run in a fresh copy of the configs):")
    for setting, *_, command in rows:
        print(f"  {setting}: python reproduce.py {' '.join(command[2:])}")


if __name__ == "__main__":
    main()
