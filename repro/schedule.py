"""Which ready run a free job starts (repro/runner.py): with more than one job, the run with the
longest chain of work behind it (its critical path), so a later seed's teacher does not wait
behind an earlier seed's students and the longest stages do not start last.

    order = start_order(plan, jobs)      # the runs, in the order free jobs take the ready ones
    work = estimate(plan).seconds        # {run.key: seconds left}: the chains, the progress line

A run's work is measured where its stage has finished runs (any seed: the wall time of their
attempts in reproduce.jsonl, per epoch), else declared: the multiply-adds of its networks
(nets/cost.py) times its epochs and images, or what its method declares (`Method.work`), turned
into seconds at the measured stages' median rate. The order never changes a number: a run trains
the same way whenever it starts. With one job the plan's order stays (it changes no wall time).
"""
import functools
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import nets
from nets.cost import forward_macs
from utils.data.registry import DATASETS

from .pipeline import ATTEMPTS_NAME, read_attempts


class Estimate(NamedTuple):
    seconds: dict                      # {run.key: work left}; 0 for a finished run
    timed: bool                        # some stage was measured: the values are seconds


def start_order(plan, jobs, seconds=None):
    """The plan's runs, ordered for free jobs: longest chain first (ties: plan order)."""
    if jobs <= 1:
        return list(plan.runs)
    chains = chain_seconds(plan, seconds or estimate(plan).seconds)
    position = {run.key: i for i, run in enumerate(plan.runs)}
    return sorted(plan.runs, key=lambda run: (-chains[run.key], position[run.key]))


def chain_seconds(plan, seconds):
    """{run.key: its own work plus the longest chain of runs that need its checkpoint}."""
    children = defaultdict(list)
    for run in plan.runs:
        if run.parent_run is not None:
            children[run.parent_run.key].append(run.key)
    chains = {}

    def chain(key):
        if key not in chains:
            chains[key] = seconds[key] + max((chain(child) for child in children[key]), default=0.0)
        return chains[key]

    for run in plan.runs:
        chain(run.key)
    return chains


def lower_bound(plan, seconds, jobs):
    """No order finishes sooner than max(longest chain, total work / jobs)."""
    chains = chain_seconds(plan, seconds)
    return max(max(chains.values(), default=0.0), sum(seconds.values()) / max(1, jobs))


# ----------------------------------------------------------------------------- the estimates

def estimate(plan):
    """Each run's work left: measured per epoch where its stage ran before, else the declared work
    at the measured rate (in declared units where nothing was measured yet); 0 if finished."""
    per_epoch = {stage.name: measured_per_epoch(stage.folder) for stage in plan.stages}
    declared = {run.key: declared_work(run) for run in plan.runs}
    rates = [per_epoch[run.stage.name] * run.num_epochs / declared[run.key] for run in plan.runs
             if per_epoch[run.stage.name] is not None and declared[run.key]]
    rate = statistics.median(rates) if rates else 1.0
    seconds = {}
    for run in plan.runs:
        measured = per_epoch[run.stage.name]
        work = measured * run.num_epochs if measured is not None else declared[run.key] * rate
        seconds[run.key] = 0.0 if finished(run.folder)[0] is not None else work
    return Estimate(seconds, bool(rates))


def measured_per_epoch(folder):
    """Median wall seconds per epoch of the finished runs of a stage (its folder, its seed_*
    folders), from their attempts; None where none finished."""
    folders = [folder, *sorted(Path(folder).glob("seed_*"))]
    rates = [seconds / epochs for seconds, epochs in map(finished, folders) if seconds is not None]
    return statistics.median(rates) if rates else None


def finished(folder):
    """(wall seconds, epochs) of a run folder whose last attempt finished (exit 0, a
    best_model.tar, the epochs of its params.json), from reproduce.jsonl; (None, None) otherwise."""
    config, made = folder / "params.json", folder / "best_model.tar"
    if not ((folder / ATTEMPTS_NAME).is_file() and config.is_file() and made.is_file()):
        return None, None
    rows = read_attempts(folder)
    epochs = json.loads(config.read_text()).get("num_epochs")
    if not rows or rows[-1].get("exit_code") != 0 or not isinstance(epochs, int) or epochs < 1:
        return None, None
    return sum(row.get("seconds") or 0.0 for row in rows), epochs


def declared_work(run):
    """Multiply-adds of the whole run: its method's own count (`Method.work`), else each epoch's
    images through the trained network (forward and backward: 3 forwards) and its frozen ones."""
    params, method = run.stage.params, run.stage.method
    macs = functools.partial(network_macs, params)
    try:
        if method.work is not None:
            return method.work(params, run.num_epochs, macs)
        frozen = sum(macs(getattr(params, network.model_key)) for network in method.frozen)
        return run.num_epochs * train_images(params) * (3 * macs(params.model_name) + frozen)
    except Exception:  # an estimate only: a network that cannot be built here costs its epochs
        return float(run.num_epochs)


def train_images(params):
    return DATASETS[params.dataset].train_images or 1


@functools.lru_cache(maxsize=None)
def _macs(name, dataset, options):
    spec = DATASETS[dataset]
    network = nets.build_model(name, spec.num_classes, input_size=spec.input_size, **dict(options))
    return forward_macs(network, (len(spec.mean) if spec.mean else 3, spec.input_size, spec.input_size))


def network_macs(params, name):
    """Multiply-adds of one forward of network `name` on one image of the run's data set."""
    return _macs(name, params.dataset, tuple(sorted(params.model_options(name).items())))
