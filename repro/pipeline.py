"""A tree of experiment configs as a plan: its stages, their order, their per-seed runs, their state.

    plan = make_plan("experiments/Digits", seeds=[0, 1, 2])
    print(describe_plan(plan))
    outcomes = execute(plan, SubprocessRunner(plan.base), Progress())

Every folder with a params.json is a stage. Its method is its `method` key or follows from its keys
(adversarial_resume: nasty, teacher_resume: kd, else scratch; see methods/), and it depends on the
stage whose folder holds the checkpoint of the frozen network its method reads. The configs write those paths relative to the folder the scripts are
started from (the project root for the published ones); the plan looks for that folder among the
current directory, the project root and the tree's own ancestors, and runs every script there, so
checkpoint paths and `data_dir` mean what they would mean when typed by hand.

With seeds, each stage runs once per seed in `<stage>/seed_<s>/`, from a copy of its params.json
with that seed whose checkpoint reference points at the same seed's run of the stage it needs.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, NamedTuple, Optional

import methods.base
from methods import load_params
from methods.base import Role
from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError, NastyError, did_you_mean
from utils.base.schema import Word
from utils.training.params import all_keys, keys_of, read_json
from utils.training.tracking import read_jsonl

from .job import ATTEMPTS_NAME

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEED_FOLDER = re.compile(r"seed_\d+")
SWEEP_FOLDER = re.compile(r"sweep_\w+")  # a sweep's generated runs (repro/sweep.py), not stages


@dataclass
class Stage:
    name: str                          # folder relative to the tree, e.g. "baseline/preresnet20"
    folder: Path                       # absolute
    method: Any                        # its row of the method table (Method)
    params: Any                        # the validated params.json
    config: dict                       # its raw values, the source of per-seed copies
    reference: Optional[str] = None    # checkpoint path as the config writes it
    checkpoint: Optional[Path] = None  # that path, resolved
    parent: Optional[str] = None       # name of the stage whose folder holds it; None: external
    overrides: dict = field(default_factory=dict)  # reproduce.py --set keys its method uses


@dataclass
class StageRun:
    stage: Stage
    seed: Optional[int]                # None: the config's own seed
    folder: Path                       # the stage's folder: in place; else a generated config's
    variant: Optional[str] = None      # a sweep's value of this run, e.g. "weight=0.06"
    overrides: dict = field(default_factory=dict)  # --set / --sweep keys on top of the config
    parent_run: Optional["StageRun"] = None  # the run whose checkpoint this one reads

    @property
    def key(self):
        return (self.stage.name, self.seed) + ((self.variant,) if self.variant else ())

    @property
    def generated(self):
        """Trained from a params.json the plan writes (per seed, per sweep value), not in place."""
        return self.folder != self.stage.folder

    @property
    def tag(self):
        parts = ([self.variant] if self.variant else []) + \
            ([f"seed {self.seed}"] if self.seed is not None else [])
        return ", ".join(parts)

    @property
    def label(self):
        return self.stage.name + (f" [{self.tag}]" if self.tag else "")

    @property
    def num_epochs(self):
        return self.overrides.get("num_epochs", self.stage.params.num_epochs)


@dataclass
class Plan:
    root: Path                         # the tree, absolute
    base: Path                         # where the scripts run; config paths are relative to it
    stages: list                       # in run order
    seeds: Optional[list]              # None: each config's own seed, in place
    runs: list                         # in run order
    sweep: Optional[Any] = None        # repro.sweep.Sweep when the plan sweeps a key

    def stage(self, name):
        return next(s for s in self.stages if s.name == name)

    def parent_key(self, run):
        return None if run.parent_run is None else run.parent_run.key


class RunState(Word):
    """What a run's folder holds, read from its last_model.tar and params.json."""
    DONE = "done"                      # every epoch trained, with these settings
    RESUME = "resume"                  # some epochs trained: continues from last_model.tar
    NEW = "new"                        # nothing trained yet
    CHANGED = "changed"                # finished, but with other settings than the plan's


class Status(NamedTuple):
    state: RunState
    epoch: int                         # epochs in last_model.tar
    num_epochs: int


# ----------------------------------------------------------------------------- discovery

def find_config_folders(root):
    """Folders below `root` holding a params.json; hidden folders and per-seed runs are not stages."""
    found = []
    for folder, subfolders, files in os.walk(root):
        is_stage = "params.json" in files
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                               and not SWEEP_FOLDER.fullmatch(d)
                               and not (is_stage and SEED_FOLDER.fullmatch(d)))
        if is_stage:
            found.append(Path(folder))
    return found


def load_stage(root, folder, overrides=None):
    """The stage of `folder`, validated now so that a bad config stops the plan, not hour three."""
    config, _ = read_json(folder / "params.json")  # duplicate keys: load_params reports them
    implied = methods.base.infer_method(config)  # which keys --set may change; the schema checks all
    own = {k: v for k, v in (overrides or {}).items() if key_applies(k, implied)}
    params = load_params(folder, overrides=own)
    method = params.method_entry
    if len(method.frozen) > 1:
        raise ConfigError(f"{folder / 'params.json'}: method {method.name!r} reads "
                          f"{len(method.frozen)} frozen networks; reproduce.py handles one per stage")
    name = folder.relative_to(root).as_posix()
    key = reference_key(method)
    return Stage(root.name if name == "." else name, folder, method, params, config,
                 reference=getattr(params, key) if key else None, overrides=own)


def key_applies(key, method):
    """Whether params key `key` means something to runs of `method` (a common key, or its own)."""
    return key in {k.name for k in keys_of(method)}


def check_overrides_apply(overrides, stages):
    for key in overrides or {}:
        if key not in all_keys(methods.base.TABLE):
            raise ConfigError(f"--set {key}: unknown key{did_you_mean(key, all_keys(methods.base.TABLE))}")
        if not any(key in s.overrides for s in stages):
            raise ConfigError(f"--set {key}: no stage's method uses this key")


def reference_key(method):
    """The params key naming the checkpoint a stage of `method` reads (None: it reads none)."""
    return method.frozen[0].resume_key if method.frozen else None


# ----------------------------------------------------------------------------- checkpoint references

def candidate_bases(root):
    """Folders the configs' relative checkpoint paths may be written against, most likely first."""
    bases = [Path.cwd().resolve(), PROJECT_ROOT, root, *root.parents]
    return list(dict.fromkeys(bases))


def link(base, reference, stage_folders):
    """(resolved path, name of the stage that writes it or None), or None when nothing does and no
    such file exists. An absolute reference ignores `base`."""
    path = (base / Path(reference).expanduser()).resolve()
    parent = stage_folders.get(path.parent)
    if parent is None and not path.is_file():
        return None
    return path, parent


def resolve_references(root, stages):
    """Pick the base folder under which every reference resolves, preferring the one under which
    most of them are the tree's own stages; set each stage's checkpoint and parent."""
    stage_folders = {s.folder.resolve(): s.name for s in stages}
    referring = [s for s in stages if s.reference]
    best = None
    for base in candidate_bases(root):
        links = [link(base, s.reference, stage_folders) for s in referring]
        if None in links:
            continue
        produced = sum(parent is not None for _, parent in links)
        if best is None or produced > best[1]:
            best = (base, produced, links)
    if best is None:
        raise unresolved_error(root, referring, stage_folders)
    base, _, links = best
    for stage, (path, parent) in zip(referring, links):
        stage.checkpoint, stage.parent = path, parent
    return base


def unresolved_error(root, referring, stage_folders):
    bases = candidate_bases(root)
    for stage in referring:
        if all(link(base, stage.reference, stage_folders) is None for base in bases):
            key = reference_key(stage.method)
            return ConfigError(
                f"{stage.folder / 'params.json'}: {key} {stage.reference!r} is neither written by "
                f"a stage under {root} nor an existing file (looked relative to "
                f"{', '.join(str(b) for b in bases[:3])} and the tree's parent folders)")
    return ConfigError(f"{root}: the configs' checkpoint paths are relative to different folders; "
                       "write them all relative to one folder (the project root, as published)")


# ----------------------------------------------------------------------------- order

def order_stages(stages):
    """Stages such that each comes after the one it needs: normal teachers, then nasty teachers,
    then students; within a level, stages that others need first, then by role and name."""
    by_name = {s.name: s for s in stages}
    level = {}

    def depth(name, trail):
        if name in trail:
            cycle = trail[trail.index(name):] + [name]
            raise ConfigError("dependency cycle: " + " -> ".join(cycle)
                              + " (each stage needs the checkpoint of the next)")
        if name not in level:
            parent = by_name[name].parent
            level[name] = 0 if parent is None else depth(parent, trail + [name]) + 1
        return level[name]

    for stage in stages:
        depth(stage.name, [])
    needed = {s.parent for s in stages if s.parent}
    return sorted(stages, key=lambda s: (level[s.name], s.name not in needed,
                                         list(Role).index(s.method.role), s.name))


def make_plan(folder, seeds=None, overrides=None):
    """The plan of every params.json below `folder`, one run per stage (and seed), in order.
    `overrides` ({key: value}, reproduce.py --set) go to every stage whose method has the key."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    folders = find_config_folders(root)
    if not folders:
        raise ConfigError(f"{folder}: no params.json below this folder")
    seeds = check_seeds(seeds)
    stages = [load_stage(root, f, overrides) for f in folders]
    check_overrides_apply(overrides, stages)
    base = resolve_references(root, stages)
    stages = order_stages(stages)
    runs = []
    for seed in seeds or [None]:  # seed by seed: the first seed's whole table comes first
        runs += seed_runs(stages, seed)
    return Plan(root, base, stages, seeds, runs)


def seed_runs(stages, seed, folder_of=None, variant=None, shared=None, overrides=None):
    """One run per stage for `seed` (None: in place), each linked to the run of its parent stage.
    `folder_of(stage)` places generated runs; `shared` maps stage names to runs made elsewhere."""
    runs, by_stage = [], dict(shared or {})
    for stage in stages:
        if stage.name in by_stage:
            continue
        folder = folder_of(stage) if folder_of else stage.folder
        folder = folder if seed is None else folder / f"seed_{seed}"
        own = {k: v for k, v in (overrides or {}).items() if key_applies(k, stage.method)}
        run = StageRun(stage, seed, folder, variant, {**stage.overrides, **own},
                       by_stage.get(stage.parent))
        by_stage[stage.name] = run
        runs.append(run)
    return runs


def check_seeds(seeds):
    if seeds is None:
        return None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    bad = [s for s in seeds if s < 0]
    if bad or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))}: seeds must be distinct and >= 0")
    return list(seeds)


# ----------------------------------------------------------------------------- per-seed runs, state

def run_config(run, base):
    """The params.json of a generated run: the config with the run's seed and overrides, reading
    its teacher's (or adversary's) run of the same seed and sweep value; an external checkpoint
    stays as it is. `base`: the folder the scripts run in, which relative paths are written against."""
    config = {**run.stage.config, **run.overrides}
    if run.seed is not None:
        config["seed"] = run.seed
    parent = run.parent_run
    if parent is not None and parent.generated:
        reference = PurePath(run.stage.reference)
        path = parent.folder / reference.name
        config[reference_key(run.stage.method)] = (
            str(path) if reference.is_absolute() else Path(os.path.relpath(path, base)).as_posix())
    return config


def write_run_config(run, base):
    """Create the folder of a generated run with its params.json (rewritten only on change)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    file = run.folder / "params.json"
    text = json.dumps(run_config(run, base), indent=4) + "\n"
    if not file.is_file() or file.read_text(encoding="utf-8") != text:
        file.write_text(text, encoding="utf-8")


def read_attempts(folder):
    """Rows of `folder/reproduce.jsonl`: each attempt's wall time and exit (repro/runner.py)."""
    return read_jsonl(Path(folder) / ATTEMPTS_NAME)


def run_status(run):
    """done: best_model.tar exists and last_model.tar holds every epoch; resume: a run to continue."""
    last, total = run.folder / "last_model.tar", run.num_epochs
    if not last.is_file():
        return Status(RunState.NEW, 0, total)
    try:
        checkpoint = load_checkpoint(last)
    except NastyError:  # damaged: the script's --resume auto names the problem
        return Status(RunState.RESUME, 0, total)
    epoch = int(checkpoint.get("epoch", 0))
    if changed_keys(run, checkpoint):
        return Status(RunState.CHANGED, epoch, total)
    finished = epoch >= total and (run.folder / "best_model.tar").is_file()
    return Status(RunState.DONE if finished else RunState.RESUME, epoch, total)


def changed_keys(run, checkpoint):
    """'key: trained with A, now B' for each --set key whose value the run was trained without
    (num_epochs aside: more epochs resume). Checkpoints without saved params cannot tell."""
    saved = checkpoint.get("params") or {}
    return [f"{key}: trained with {saved[key]!r}, now {value!r}"
            for key, value in run.overrides.items()
            if key != "num_epochs" and key in saved and saved[key] != value]


def status_text(status):
    if status.state == RunState.CHANGED:
        return "trained with other values of the --set keys"
    if status.state == RunState.DONE:
        return f"done ({status.epoch}/{status.num_epochs} epochs)"
    if status.state == RunState.RESUME:
        return f"resume after epoch {status.epoch}/{status.num_epochs}"
    return f"new ({status.num_epochs} epoch{'s' if status.num_epochs > 1 else ''})"


# ----------------------------------------------------------------------------- the plan as text

def describe_plan(plan):
    """The plan as a table: order, mode, model, what each stage needs and what is left to do."""
    seeds = "each config's own seed" if plan.seeds is None else \
        "seeds " + ", ".join(map(str, plan.seeds))
    lines = [(f"Plan for {plan.root}: {len(plan.stages)} stages, {seeds}, {len(plan.runs)} runs; "
              f"the scripts run in {plan.base}")]
    statuses = {run.key: run_status(run) for run in plan.runs}
    rows = [("#", "stage", "method", "model", "needs", "state")]
    for number, stage in enumerate(plan.stages, 1):
        states = [f"{r.tag + ': ' if r.tag else ''}{status_text(statuses[r.key])}"
                  for r in plan.runs if r.stage is stage]
        rows.append((str(number), stage.name, stage.method.name, stage.params.model_name,
                     needs_text(stage), "; ".join(states)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    left = sum(status.state != RunState.DONE for status in statuses.values())
    lines.append(f"{left} of {len(plan.runs)} runs to train; finished ones are skipped, "
                 "started ones resume")
    return "\n".join(lines)


def needs_text(stage):
    if stage.reference is None:
        return "-"
    role = stage.method.frozen[0].role
    if stage.parent is None:
        return f"{role}: external {stage.checkpoint}"
    return f"{role}: {stage.parent}"
