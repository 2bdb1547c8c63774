"""Sweeps: a tree's dependent chain once per value of one params key, then a table and a plot.

    python reproduce.py experiments/Digits --sweep weight=0.02,0.04,0.06,0.08
    python reproduce.py experiments/Digits --sweep temperature=2,4,8 --seeds 0 1 2

Which stages a key applies to: those whose method has the key (methods/): `weight` the nasty
teachers, `alpha` the kd students, `temperature` both, a key every run has (`learning_rate`,
`num_epochs`) every stage. Those stages and every stage that needs their checkpoints, directly or
not, run once per value in `<tree>/sweep_<key>/<key>_<value>/<stage>/` (and `seed_<s>/` below with
--seeds); every other stage runs once, where it would without the sweep, and all values share it
(for `weight`: the normal teacher and the students trained alone). The table (results.md,
results.json) and the figure (`sweep_<key>.png`: each teacher's and student's accuracy against the
value) are written to `<tree>/sweep_<key>/`.
"""
import json
import re
from dataclasses import replace
from typing import NamedTuple

from methods import load_params
from methods.base import TABLE, defence_keys
from utils.base.errors import ConfigError, did_you_mean
from utils.base.provenance import git_commit
from utils.training.params import all_keys

from .matrix import render_matrix
from .pipeline import Plan, key_applies, seed_runs
from .report import collect, fmt, numerics_counts, render_group, render_numerics


class Sweep(NamedTuple):
    key: str
    values: list
    labels: list                       # "weight=0.02", ... in the order of `values`
    affected: list                     # names of the stages that run once per value
    folder: object                     # <tree>/sweep_<key>


def parse_sweep(text):
    """'KEY=V1,V2,...' -> (key, [values]); each value is JSON when it is JSON, else a string."""
    key, sep, rest = text.partition("=")
    values = [v.strip() for v in rest.split(",") if v.strip()] if sep else []
    if not key.strip() or len(values) < 2:
        raise ConfigError(f"--sweep {text}: give KEY=V1,V2,... with two or more values "
                          "(e.g. --sweep weight=0.02,0.04,0.06)")

    def value(v):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    parsed = [value(v) for v in values]
    if len({json.dumps(v) for v in parsed}) != len(parsed):
        raise ConfigError(f"--sweep {text}: the values must be distinct")
    return key.strip(), parsed


def value_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def stage_uses(key, stage):
    """Whether `key` means something to the runs of `stage`: its method has it and, for a key of a
    teacher defence, the stage's teacher answers through that defence (every defended student has
    mad_epsilon in its schema; only a MAD row's students read it)."""
    if not key_applies(key, stage.method):
        return False
    if key not in {k.name for k in defence_keys()}:
        return True
    defence = stage.method.defence(stage.params)
    return defence is not None and key in {k.name for k in defence.keys}


def affected_stages(plan, key):
    """Stages that use `key`, and every stage below them in the dependency order."""
    affected = set()
    for stage in plan.stages:  # in run order: a parent is decided before its children
        if stage_uses(key, stage) or stage.parent in affected:
            affected.add(stage.name)
    return [s.name for s in plan.stages if s.name in affected]


def check_sweep(plan, key, values, overrides):
    if key not in all_keys(TABLE):
        raise ConfigError(f"--sweep {key}: unknown key{did_you_mean(key, all_keys(TABLE))}")
    if key == "seed":
        raise ConfigError("--sweep seed: use --seeds, which also gives mean and std")
    if key in (overrides or {}):
        raise ConfigError(f"--sweep {key} and --set {key} contradict each other")
    affected = affected_stages(plan, key)
    if not affected:
        raise ConfigError(f"--sweep {key}: no stage's method uses this key")
    for name in affected:  # every value through the schema now, not at hour three
        stage = plan.stage(name)
        if stage_uses(key, stage):
            for value in values:
                load_params(stage.folder, overrides={**stage.overrides, key: value})
    return affected


def sweep_plan(plan, text, overrides=None):
    """`plan` with its affected stages' runs replaced by one set of runs per value."""
    key, values = parse_sweep(text)
    affected = check_sweep(plan, key, values, overrides)
    folder = plan.root / f"sweep_{key}"
    labels = [f"{key}={value_text(v)}" for v in values]
    runs = [r for r in plan.runs if r.stage.name not in affected]
    for seed in plan.seeds or [None]:
        shared = {r.stage.name: r for r in runs if r.seed == seed}
        for value, label in zip(values, labels):
            here = folder / f"{key}_{re.sub(r'[^A-Za-z0-9.+-]', '_', value_text(value))}"
            # the value goes to the stages whose method has the key; the rest of the chain
            # only reads their checkpoints
            runs += seed_runs(plan.stages, seed, lambda s: here / s.name, label, shared, {key: value})
    return replace(plan, runs=runs, sweep=Sweep(key, values, labels, affected, folder))


def value_view(plan, label):
    """The plan of one value: the shared runs and that value's, one per stage and seed; the
    stages that use the key hold its value in their params (a table labels a row by them)."""
    sweep = plan.sweep
    value = sweep.values[sweep.labels.index(label)]
    stages = {s.name: replace(s, params=load_params(s.folder, overrides={**s.overrides, sweep.key: value}))
              if stage_uses(sweep.key, s) else s for s in plan.stages}
    runs = [replace(r, stage=stages[r.stage.name]) for r in plan.runs if r.variant in (None, label)]
    return Plan(plan.root, plan.base, list(stages.values()), plan.seeds, runs)


# ----------------------------------------------------------------------------- the table and plot

def collect_sweep(plan, outcomes):
    sweep = plan.sweep
    per_value = []
    for value, label in zip(sweep.values, sweep.labels):
        results = collect(value_view(plan, label), outcomes)
        per_value.append({"value": value, "label": label, "groups": results["groups"],
                          "matrices": results["matrices"], "stages": results["stages"]})
    return {"folder": str(sweep.folder), "key": sweep.key, "values": sweep.values,
            "affected": sweep.affected, "seeds": plan.seeds, "git_commit": git_commit(),
            "numerics": numerics_counts(distinct_runs(per_value)), "per_value": per_value,
            "figures": [], "notes": []}


def distinct_runs(per_value):
    """{run folder: {'runs': [run]}} over every value: a shared run counted once (for
    numerics_counts and render_numerics, which read stages of runs)."""
    return {run["folder"]: {"runs": [run]} for entry in per_value
            for stage in entry["stages"].values() for run in stage["runs"]}


def series(results):
    """Per teacher group: [(series name, [accuracy stats per value])], teachers first."""
    groups = []
    for index, first in enumerate(results["per_value"][0]["groups"]):
        rows = [v["groups"][index] for v in results["per_value"]]
        named = [("normal teacher", [r["teacher"]["acc"] for r in rows])]
        if first["nasty"]["stage"]:
            named.append(("nasty teacher", [r["nasty"]["acc"] for r in rows]))
        for column, student in enumerate(first["students"]):
            for role, what in (("alone", "alone"), ("normal", "from normal"), ("nasty", "from nasty")):
                if student[role]["stage"]:
                    named.append((f"{student['label']} {what}",
                                  [r["students"][column][role]["acc"] for r in rows]))
        groups.append((first["model"], named))
    return groups


def render_sweep(results):
    key, expected = results["key"], len(results["seeds"] or [None])
    lines = [f"# Sweep of `{key}` in {results['folder']}", "",
             f"Runs once per value: {', '.join(f'`{n}`' for n in results['affected'])}; the other "
             "stages are shared by all values. Best test accuracy (%)"
             + (f", mean ± std over seeds {', '.join(map(str, results['seeds']))}." if results["seeds"]
                else ", each config's own seed."), ""]
    for model, named in series(results):
        lines += [f"## Teacher {model}", "", f"| {key} | " + " | ".join(n for n, _ in named) + " |",
                  "| --- |" + " --- |" * len(named)]
        for position, value in enumerate(results["values"]):
            lines.append(f"| {value_text(value)} | "
                         + " | ".join(fmt(s[position], expected) for _, s in named) + " |")
        lines.append("")
    lines += [f"![sweep of {key}]({name})" for name in results["figures"]]
    lines += [""] + render_numerics({"numerics": results.get("numerics"),
                                     "stages": distinct_runs(results["per_value"])})
    lines += ["## Each value's table", ""]
    for entry in results["per_value"]:
        lines += [f"### {entry['label']}", ""]
        shown = [render_group(group, results["seeds"]) for group in entry["groups"]]
        shown += [render_matrix(record, results["seeds"]) for record in entry.get("matrices", [])]
        for part in shown:  # the headings one level down, without the tree's figures
            lines += [line.replace("## ", "#### ", 1) if line.startswith("## ") else line
                      for line in part if not line.startswith("![")]
    lines += [f"- {note}" for note in results["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def draw_sweep(plt, path, results):
    groups = series(results)
    figure, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
    values = results["values"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    for axis, (model, named) in zip(axes[0], groups):
        for name, stats in named:
            points = [(x, s["mean"], s["std"] or 0.0) for x, s in zip(xs, stats) if s]
            if points:
                x, mean, std = zip(*points)
                style = "s--" if "teacher" in name else "o-"
                axis.errorbar(x, mean, yerr=std, fmt=style, capsize=3, label=name)
        axis.set_title(f"teacher {model}", fontsize=9)
        axis.set_xlabel(results["key"], fontsize=8)
        axis.set_ylabel("best test accuracy (%)", fontsize=8)
        if not numeric:
            axis.set_xticks(xs, [value_text(v) for v in values])
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_sweep_report(plan, results, draw=True):
    """results.md, results.json and sweep_<key>.png in `<tree>/sweep_<key>/`; returns the markdown."""
    from .figures import pyplot
    folder = plan.sweep.folder
    folder.mkdir(parents=True, exist_ok=True)
    plt = pyplot() if draw else None
    if draw and plt is None:
        results["notes"].append("matplotlib is not installed, so there is no figure")
    elif plt is not None:
        name = f"sweep_{results['key']}.png"
        try:
            draw_sweep(plt, folder / name, results)
            results["figures"].append(name)
        except Exception as error:  # a figure is never a reason to lose the table
            results["notes"].append(f"no figure: {type(error).__name__}: {error}")
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = render_sweep(results)
    (folder / "results.md").write_text(text, encoding="utf-8")
    return text

