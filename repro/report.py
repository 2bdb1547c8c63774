"""The paper's table from a plan's runs: `<tree>/results.md` (also printed) and `<tree>/results.json`.

    results = collect(plan, outcomes)      # every number read back from the runs' metrics.jsonl
    text = write_report(plan, results)     # results.md, results.json; returns the markdown

The layout is that of the paper's Table 1: per normal teacher, a row for the students trained
alone, a row for the normal teacher and one for the nasty teacher; the first column holds the
teachers' own accuracy, then one column per student network. Accuracy is each run's best test
accuracy over its epochs, as the original reports it; with several seeds, mean ± sample
standard deviation. Differences (in parentheses) are between means: nasty teacher minus normal
teacher, student distilled minus the same network trained alone. A run that has not finished
gives no number ("—").
"""
import json
from collections import Counter
from typing import NamedTuple, Optional

from methods.base import Role
from utils.base.provenance import git_commit
from utils.training.tracking import read_metrics, read_teacher_record

from .matrix import find_matrices, matrix_record, render_matrix
from .pipeline import RunState, read_attempts, run_status
from .runner import Result, exit_text
from .tables import (
    MISSING,
    alone_stage,
    cell,
    fmt,
    fmt_cell,
    is_paper_student,
    model_key,
    model_label,
    stats,
)

ACCURACY_NOTE = ("best test accuracy (%) over the epochs of each run, as the original reports it "
                 "(from the run's metrics.jsonl); with several seeds: mean ± sample std")


class Column(NamedTuple):
    label: str
    alone: Optional[str]    # stage names
    normal: Optional[str]
    nasty: Optional[str]


class Group(NamedTuple):
    teacher: Optional[str]  # the normal teacher's stage; None: an external adversary
    nasty: Optional[str]
    model: str
    columns: list


# ----------------------------------------------------------------------------- numbers


def run_record(run, outcome):
    rows = read_metrics(run.folder / "metrics.jsonl")
    finished = outcome.state in (Result.DONE, Result.RAN) if outcome else run_status(run).state == RunState.DONE
    attempts = read_attempts(run.folder)
    last = rows[-1] if rows else {}
    teacher = read_teacher_record(run.folder)
    return {"seed": run.stage.params.seed if run.seed is None else run.seed,
            "folder": str(run.folder),
            "state": outcome.state if outcome else (Result.DONE if finished else Result.NOT_RUN),
            "finished": finished,
            "best_acc": last.get("best_acc") if finished else None,
            "best_epoch": last.get("best_epoch") if finished else None,
            "epochs": last.get("epoch", 0),
            "test_acc": [r.get("test_acc") for r in rows],
            "epoch_seconds": round(sum(r.get("seconds", 0.0) for r in rows), 1),
            "numerics": sorted({r["numerics"] for r in rows if r.get("numerics")}),
            "numerics_partial": any(not r.get("numerics") for r in rows) and
            any(r.get("numerics") for r in rows),
            "wall_seconds": round(sum(a.get("seconds", 0.0) for a in attempts), 1) if attempts else None,
            "answered_acc": teacher.get("answered_acc"),  # its teacher through its defence
            "top_class_kept": teacher.get("top_class_kept"),
            "exit_code": outcome.exit_code if outcome else None,
            "log": outcome.log if outcome else None,
            "message": outcome.message if outcome else ""}


def collect(plan, outcomes):
    """The content of results.json: per stage its runs and accuracy, and the paper's groups."""
    stages = {}
    for stage in plan.stages:
        own = [r for r in plan.runs if r.stage is stage]
        runs = [run_record(r, outcomes.get(r.key)) for r in own]
        # the effective params: the file's, then --set and a sweep's value (the same for the runs
        # of one plan view; seeds are per run)
        params = {**stage.params.as_dict(), **(own[0].overrides if own else {})}
        stages[stage.name] = {
            "method": stage.method.name, "role": stage.method.role,
            "model": stage.params.model_name, "dataset": stage.params.dataset,
            "num_epochs": stage.params.num_epochs, "needs": stage.parent,
            "checkpoint": None if stage.checkpoint is None else str(stage.checkpoint),
            "temperature": stage.method.soft_temperature(stage.params), "runs": runs,
            "best_acc": stats([r["best_acc"] for r in runs]), "params": params,
            "answered_acc": stats([r["answered_acc"] for r in runs]),
            "top_class_kept": stats([r["top_class_kept"] for r in runs])}
    found = find_matrices(plan.stages)
    groups = [group_record(g, stages, plan) for g in find_groups(plan.stages) if g.columns or not found]
    matrices = [matrix_record(m, stages) for m in found]
    return {"folder": str(plan.root), "seeds": plan.seeds, "accuracy": ACCURACY_NOTE,
            "git_commit": git_commit(), "numerics": numerics_counts(stages), "stages": stages,
            "groups": groups, "matrices": matrices, "notes": []}


def numerics_counts(stages):
    """{fingerprint line: number of runs with epochs trained under it}, most runs first."""
    counts = Counter(text for stage in stages.values() for run in stage["runs"]
                     for text in run.get("numerics", []))
    return dict(counts.most_common())


# ----------------------------------------------------------------------------- groups


def find_groups(stages):
    """One group per (normal teacher, nasty teacher that uses it as adversary)."""
    groups = []
    for teacher in stages:
        if teacher.method.role != Role.TEACHER or not any(s.parent == teacher.name for s in stages):
            continue
        nasties = [s for s in stages
                   if s.method.role == Role.DEFENDED_TEACHER and s.parent == teacher.name] or [None]
        for nasty in nasties:
            groups.append(Group(teacher.name, nasty and nasty.name, teacher.params.model_name,
                                student_columns(stages, teacher, nasty)))
    for nasty in stages:  # adversary trained elsewhere: the nasty half of the table only
        if nasty.method.role == Role.DEFENDED_TEACHER and nasty.parent is None:
            frozen_model = getattr(nasty.params, nasty.method.frozen[0].model_key)
            groups.append(Group(None, nasty.name, frozen_model,
                                student_columns(stages, None, nasty)))
    return groups


def student_columns(stages, teacher, nasty):
    """A column per student network (and distillation setting): alone, from normal, from nasty."""
    roles = {stage.name: role for stage, role in ((teacher, "normal"), (nasty, "nasty")) if stage}
    cells, labels = {}, {}
    for student in stages:
        role = roles.get(student.parent) if is_paper_student(student) else None
        if role is None:
            continue
        key = (model_key(student), student.method.setting_text(student.params))
        cells.setdefault(key, {}).setdefault(role, student.name)
        labels[key] = model_label(student)
    repeated = Counter(labels.values())
    columns = []
    for key, roles_of in cells.items():
        label = labels[key]
        if repeated[label] > 1 and key[1]:  # the same network distilled with two settings
            label += f", {key[1]}"
        student = next(s for s in stages if s.name == (roles_of.get("normal") or roles_of.get("nasty")))
        columns.append(Column(label, alone_stage(stages, student, teacher), roles_of.get("normal"),
                              roles_of.get("nasty")))
    return columns


def group_record(group, stages, plan):
    students = [{"label": c.label, "alone": cell(stages, c.alone),
                 "normal": cell(stages, c.normal, c.alone), "nasty": cell(stages, c.nasty, c.alone)}
                for c in group.columns]
    return {"model": group.model, "teacher": cell(stages, group.teacher),
            "nasty": cell(stages, group.nasty, group.teacher), "students": students,
            "temperature": distillation_temperature(group, plan), "comparison": None,
            "defended_label": defended_label(group, plan), "figures": []}


def defended_label(group, plan):
    """How the defended teacher's method labels its row (the nasty teacher: 'nasty')."""
    if not group.nasty:
        return None
    stage = plan.stage(group.nasty)
    return stage.method.table_label(stage.params)


def distillation_temperature(group, plan):
    """The T the students distil at from the nasty teacher (else the nasty teacher's own T), as
    their methods declare it."""
    for column in group.columns:
        for name in (column.nasty, column.normal):
            if name:
                stage = plan.stage(name)
                return stage.method.soft_temperature(stage.params)
    if group.nasty:
        stage = plan.stage(group.nasty)
        return stage.method.soft_temperature(stage.params)
    return None


# ----------------------------------------------------------------------------- markdown


def render_group(group, seeds):
    expected = len(seeds or [None])
    teacher, nasty = group["teacher"], group["nasty"]
    label = group.get("defended_label") or "defended"
    names = [f"normal `{teacher['stage'] or 'external'}`"] + ([f"{label} `{nasty['stage']}`"]
                                                              if nasty["stage"] else [])
    students = group["students"]
    lines = [f"## Teacher {group['model']} ({', '.join(names)})", "",
             "| Teacher network | Teacher accuracy | " + " | ".join(s["label"] for s in students) + " |",
             "| --- | --- |" + " --- |" * len(students),
             f"| Students trained alone | {MISSING} | "
             + " | ".join(fmt(s["alone"]["acc"], expected) for s in students) + " |",
             f"| {group['model']} (normal) | {fmt_cell(teacher, expected)} | "
             + " | ".join(fmt_cell(s["normal"], expected) for s in students) + " |"]
    if nasty["stage"]:
        lines.append(f"| {group['model']} ({label}) | {fmt_cell(nasty, expected)} | "
                     + " | ".join(fmt_cell(s["nasty"], expected) for s in students) + " |")
    lines.append("")
    lines += render_comparison(group, seeds)
    return lines


def render_comparison(group, seeds):
    comparison, lines = group["comparison"], []
    if comparison:
        which = f" (the runs of seed {comparison['seed']})" if seeds else ""
        lines.append(f"How nasty: mean KL(nasty ‖ normal) of the softmax outputs at "
                     f"T = {comparison['temperature']:g} over {comparison['images']} test images{which} "
                     f"is {comparison['mean_kl']:.3f} (per class {min(comparison['per_class_kl']):.3f}"
                     f" to {max(comparison['per_class_kl']):.3f}); the two teachers agree on the "
                     f"class of {comparison['agreement']:.1f}% of them.")
        lines.append("")
    lines += [f"![{name.rsplit('.', 1)[0]}]({name})" for name in group["figures"]]
    return lines + ([""] if group["figures"] else [])


def seconds(value):
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def states_text(runs):
    counts = Counter(r["state"] for r in runs)
    return ", ".join(state if n == 1 and len(runs) == 1 else f"{n} {state}"
                     for state, n in counts.items())


def render_stages(results):
    lines = ["## Stages", "",
             ("| stage | method | model | state | best acc (%) | epochs | training time (s) "
              "| wall time (s) |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    expected = len(results["seeds"] or [None])
    for name, stage in results["stages"].items():
        runs = stage["runs"]
        epochs = sorted({r["epochs"] for r in runs})
        walls = [r["wall_seconds"] for r in runs if r["wall_seconds"] is not None]
        lines.append(f"| `{name}` | {stage['method']} | {stage['model']} | {states_text(runs)} | "
                     f"{fmt(stage['best_acc'], expected)} | "
                     f"{'/'.join(map(str, epochs))} of {stage['num_epochs']} | "
                     f"{seconds(sum(r['epoch_seconds'] for r in runs))} | "
                     f"{seconds(sum(walls)) if walls else MISSING} |")
    lines += ["", "Training time: the epochs' own times from metrics.jsonl; wall time: reproduce.py's "
              "runs of the script, start-up included (" + MISSING + ": trained by other means)"
              + ("; both summed over the seeds." if expected > 1 else "."), ""]
    return lines


def render_problems(results):
    lines = []
    for name, stage in results["stages"].items():
        for run in stage["runs"]:
            label = f"`{name}`" + ("" if results["seeds"] is None else f" [seed {run['seed']}]")
            if run["state"] == Result.FAILED and run["log"] is None:
                lines.append(f"- {label} not trained: {run['message']}")
            elif run["state"] == Result.FAILED:
                lines.append(f"- {label} failed ({exit_text(run['exit_code'])}), log: {run['log']}"
                             + (f": {run['message']}" if run["message"] else ""))
            elif run["state"] in (Result.SKIPPED, Result.NOT_RUN):
                lines.append(f"- {label} {run['state']}"
                             + (f": {run['message']}" if run["message"] else ""))
    lines += [f"- {note}" for note in results["notes"]]
    return ["## Problems", ""] + lines + [""] if lines else []


def render_numerics(results):
    """Where the numbers hold: the fingerprint(s) of the processes that trained the runs."""
    counts = results.get("numerics") or {}
    if not counts:
        return []
    runs = [run for stage in results["stages"].values() for run in stage["runs"]]
    # a run without one was not trained, or trained (some epochs) before fingerprints existed
    unknown = sum(1 for run in runs if not run.get("numerics") or run.get("numerics_partial"))
    if len(counts) == 1 and not unknown:
        return [f"Numerics: {next(iter(counts))} (every run). Exact numbers hold for this "
                "fingerprint; see utils/base/provenance.py.", ""]
    if len(counts) == 1:
        return [f"Numerics: {next(iter(counts))} ({len(runs) - unknown} of {len(runs)} runs; the "
                "others record none for some or all epochs: not trained, or trained before "
                "fingerprints existed).", ""]
    lines = ["Numerics: the runs were trained under several fingerprints, so their exact numbers "
             "come from different machines or settings:"]
    lines += [f"- {text}: {n} run(s)" for text, n in counts.items()]
    lines += [f"- none recorded (for some or all epochs): {unknown} run(s)"] if unknown else []
    return lines + [""]


def render(results):
    seeds = results["seeds"]
    lines = [f"# Results of {results['folder']}", "",
             f"Accuracy: {ACCURACY_NOTE}."
             + (f" Seeds: {', '.join(map(str, seeds))}." if seeds else " Each config's own seed.")
             + " In parentheses: nasty minus normal teacher; a distilled student minus the same "
             "network trained alone.", ""]
    for group in results["groups"]:
        lines += render_group(group, seeds)
    for record in results.get("matrices", []):
        lines += render_matrix(record, seeds)
    lines += render_numerics(results) + render_stages(results) + render_problems(results)
    return "\n".join(lines).rstrip() + "\n"


def write_report(plan, results):
    """Write results.json and results.md into the tree; returns the markdown."""
    (plan.root / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = render(results)
    (plan.root / "results.md").write_text(text, encoding="utf-8")
    return text

