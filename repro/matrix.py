"""The defence x attack table: per normal teacher and student network, a row per teacher defence
(normal, nasty, stingy, reverse, ...) and a column per student strategy (alone, the reference,
kd, dkd, skeptical, fitnet, ...), as `reproduce.py experiments/DigitsAttacks` writes it into
results.md, results.json and `attacks_<teacher>_<student>.png`.

A student's row is its teacher's defence: a defended teacher (a stage of a method whose role is
"defended teacher") by its method's label; a normal teacher by the defence the student reads it
through (the method table's `Defence`: its row label, e.g. "stingy (sparse 0.2)"). Its column is
its method's label and its threat model (the `access` it declares: the teacher's outputs or its
weights). A defence of the outputs does not apply to a strategy that reads no defended outputs
(fitnet, attention transfer): those cells say so. Rows and columns are ordered by the ranks the
methods and defences declare; this module names none of them.

Each cell is the mean ± std of the best accuracies over the seeds, its difference to the same
network trained alone and, where the tree has it, to the reference student (the method that
declares `reference`: a student alone with label smoothing), with a verdict (VERDICT_RULE). Each
row also holds the accuracy of the teacher it learns from. A tree whose students are all plain KD
from logits has only the paper's table (repro/report.py).
"""
from methods.base import NO_DEFENCE, Role

from .tables import (
    MISSING,
    alone_stage,
    cell,
    fmt,
    fmt_cell,
    is_paper_student,
    model_key,
    model_label,
    reference_stage,
)

HOLDS, FAILS = "holds", "does not hold"
VERDICT_RULE = ("the defence holds against a strategy when that strategy's student from the "
                "defended teacher is below the reference student (label smoothing) by more than "
                "the seeds' spread: mean(cell) < mean(reference) - (std(cell) + std(reference)), "
                "sample stds over the seeds; with fewer than 2 seeds on either side there is no "
                "verdict, nor in the row of the undefended teacher")
NOT_APPLIED = "n/a: reads weights"


def verdict(entry, reference):
    """HOLDS, FAILS, or None (no reference, or fewer than 2 seeds on either side)."""
    acc, ref = entry["acc"], reference["acc"] if reference else None
    if not acc or not ref or acc["std"] is None or ref["std"] is None:
        return None
    return HOLDS if acc["mean"] < ref["mean"] - (acc["std"] + ref["std"]) else FAILS


def defence_of(student, by_name):
    """((rank, row label), name of the teacher stage whose accuracy the row shows, normal
    teacher's name, whether the row is a defence of the outputs alone, whether the students
    read the teacher through a defence (their teacher.json then holds its answered accuracy))."""
    teacher = by_name[student.parent]
    defence = student.method.defence(student.params) or NO_DEFENCE  # none read: the own outputs
    answered = defence is not NO_DEFENCE
    if teacher.method.role == Role.DEFENDED_TEACHER:
        label = teacher.method.table_label(teacher.params)
        label += f", {defence.row_label(student.params)}" if answered else ""  # e.g. "SDB, key holder"
        return (teacher.method.rank, label), teacher.name, teacher.parent, False, answered
    return (defence.rank, defence.row_label(student.params)), teacher.name, teacher.name, answered, answered


def column_of(student):
    method = student.method
    return ((method.rank, method.table_label(student.params)),
            {"access": method.access, "defended": method.defended})


def find_matrices(stages):
    """[{teacher, student label, alone, reference, strategies, columns: {strategy: {access,
    defended}}, rows: [(defence, teacher stage, {strategy: stage}, outputs only, answered)]}] for
    trees with more than the paper's students; [] otherwise."""
    by_name = {s.name: s for s in stages}
    students = [s for s in stages if s.method.role == Role.STUDENT and s.parent in by_name]
    if all(is_paper_student(s) for s in students):
        return []
    found = {}
    for student in students:
        defence, teacher, normal, outputs_only, answered = defence_of(student, by_name)
        if normal is None or by_name[normal].method.role != Role.TEACHER:
            continue
        entry = found.setdefault((normal, model_key(student)), {
            "teacher": normal, "student": model_label(student), "rows": {}, "columns": {},
            "alone": alone_stage(stages, student, by_name[normal]),
            "reference": reference_stage(stages, student)})
        row = entry["rows"].setdefault(defence, {"teacher": teacher, "cells": {},
                                                 "outputs_only": outputs_only, "answered": answered})
        column, declared = column_of(student)
        entry["columns"][column] = declared
        row["cells"].setdefault(column, student.name)
    matrices = []
    for entry in found.values():
        reference = by_name.get(entry["reference"])
        entry["reference_label"] = (reference.method.table_label(reference.params)
                                    if reference else None)
        columns = sorted(entry["columns"])
        rows = [(label, row["teacher"], {c[1]: name for c, name in row["cells"].items()},
                 row["outputs_only"], row["answered"]) for (_, label), row in sorted(entry["rows"].items())]
        matrices.append({**entry, "strategies": [label for _, label in columns],
                         "columns": {c[1]: entry["columns"][c] for c in columns}, "rows": rows})
    return matrices


def strategy_cell(stages, name, matrix, reference, applies, defended):
    """A cell: cell()'s numbers, the difference to the reference and, in a row of a defence, the
    verdict; or, where the row's defence does not act on what the strategy reads, only that."""
    if not applies:
        return {"stage": None, "acc": None, "delta": None, "applies": False}
    entry = cell(stages, name, matrix["alone"])
    ref = reference["acc"] if reference else None
    entry["delta_reference"] = (entry["acc"]["mean"] - ref["mean"]
                                if entry["acc"] and ref else None)
    entry["verdict"] = verdict(entry, reference) if defended else None
    return {**entry, "applies": True}


def answered_teacher(stages, cells, normal, teacher):
    """The teacher of a row whose students read it through a defence, as the defence answers (the
    top class of what it hands out), as the row's students measured it (their teacher.json), minus
    the normal teacher's accuracy; the teacher stage's own before any student has started."""
    base = stages[normal]["best_acc"]
    for name in cells.values():
        answered = stages[name].get("answered_acc") if name else None
        if answered:
            return {"stage": teacher, "acc": answered, "top_class_kept": stages[name]["top_class_kept"],
                    "delta": answered["mean"] - base["mean"] if base else None}
    return cell(stages, teacher, None if teacher == normal else normal)


def matrix_record(matrix, stages):
    """The numbers of one matrix (results.json), from collect()'s per-stage records."""
    normal = matrix["teacher"]
    reference = cell(stages, matrix["reference"], matrix["alone"]) if matrix["reference"] else None
    rows = []
    for label, teacher, cells, outputs_only, answered in matrix["rows"]:
        defended = outputs_only or teacher != normal  # the undefended row gets no verdict
        row_cells = {m: strategy_cell(stages, cells.get(m), matrix, reference,
                                      matrix["columns"][m]["defended"] or not outputs_only, defended)
                     for m in matrix["strategies"]}
        own = (answered_teacher(stages, cells, normal, teacher) if answered
               else cell(stages, teacher, None if teacher == normal else normal))
        rows.append({"defence": label, "outputs_only": outputs_only, "cells": row_cells, "teacher": own})
    return {"teacher": normal, "teacher_model": stages[normal]["model"],
            "student": matrix["student"], "alone": cell(stages, matrix["alone"]),
            "reference": reference, "reference_label": matrix["reference_label"],
            "verdict_rule": VERDICT_RULE if reference else None,
            "strategies": matrix["strategies"],
            "access": {m: str(c["access"]) for m, c in matrix["columns"].items()},
            "rows": rows, "figures": []}


def render_cell(entry, expected):
    if not entry["applies"]:
        return NOT_APPLIED
    if not entry["stage"]:
        return MISSING
    text = fmt(entry["acc"], expected)
    deltas = [f"{d:+.2f}" for d in (entry["delta"], entry.get("delta_reference")) if d is not None]
    text += f" ({' / '.join(deltas)})" if deltas else ""
    return text + (f" **{entry['verdict']}**" if entry.get("verdict") else "")


def render_matrix(record, seeds):
    expected = len(seeds or [None])
    strategies, reference = record["strategies"], record["reference"]
    headers = ["alone"] + ([record["reference_label"]] if reference else []) + [
        f"{m} [{record['access'][m]}]" for m in strategies]
    lines = [f"## Defences × student strategies: teacher {record['teacher_model']} "
             f"(`{record['teacher']}`), student {record['student']}", "",
             "| Teacher defence | Teacher accuracy | " + " | ".join(headers) + " |",
             "| --- | --- |" + " --- |" * len(headers)]
    fixed = [fmt(record["alone"]["acc"], expected)] + (
        [fmt_cell(reference, expected)] if reference else [])
    for row in record["rows"]:
        cells = [render_cell(row["cells"][m], expected) for m in strategies]
        lines.append(f"| {row['defence']} | {teacher_text(row['teacher'], expected)} | "
                     + " | ".join(fixed + cells) + " |")
    second = " / minus the reference student" if reference else ""
    lines += ["", "Teacher accuracy: of the teacher the row's students learn from (in parentheses: "
              "minus the normal teacher's); where the row's students read the teacher through a "
              "defence of its answers, of the top class of what it hands out, as they measured it, "
              "and on how many test images that is the teacher's own top class. A cell: the student's "
              "accuracy and, in parentheses, "
              f"minus the same network trained alone{second}. In brackets, what the strategy "
              f"needs of the teacher: its outputs (what an API answers) or its weights "
              f"(white-box); '{NOT_APPLIED}': the row's defence changes only the outputs, which "
              f"that strategy does not read.", ""]
    if reference:
        lines += [f"Verdict: {VERDICT_RULE}.", ""]
    lines += [f"![{name.rsplit('.', 1)[0]}]({name})" for name in record["figures"]]
    return lines + ([""] if record["figures"] else [])


def teacher_text(entry, expected):
    kept = entry.get("top_class_kept")
    return fmt_cell(entry, expected) + (f"; top class kept on {kept['mean']:.1f}%" if kept else "")


def heat_value(entry):
    """What a heat-map cell shows: the difference to the reference, else to the student alone."""
    if entry.get("delta_reference") is not None:
        return entry["delta_reference"]
    return entry["delta"]


def cell_text(entry):
    if not entry["applies"]:
        return "n/a\n(weights)"
    if entry["acc"] is None:
        return MISSING
    text = f"{entry['acc']['mean']:.1f}"
    if heat_value(entry) is not None:
        text += f"\n({heat_value(entry):+.1f})"
    return text + ("\nholds" if entry.get("verdict") == HOLDS else "")


def draw_matrix(plt, path, record):
    """Heat map of the differences to the reference student, or to the student alone without one
    (red: the defence costs the student); grey: no run, or a defence that does not apply."""
    rows, strategies = record["rows"], record["strategies"]
    deltas = [[heat_value(row["cells"][m]) for m in strategies] for row in rows]
    bound = max([abs(d) for line in deltas for d in line if d is not None] + [1.0])
    figure, axis = plt.subplots(figsize=(1.9 * len(strategies) + 2.5, 0.8 * len(rows) + 1.6))
    colours = plt.get_cmap("RdBu").with_extremes(bad="0.85")  # no run: grey, not "no difference"
    values = [[float("nan") if d is None else d for d in line] for line in deltas]
    image = axis.imshow(values, cmap=colours, vmin=-bound, vmax=bound, aspect="auto")
    for i, row in enumerate(rows):
        for j, strategy in enumerate(strategies):
            delta = heat_value(row["cells"][strategy])
            strong = delta is not None and abs(delta) > 0.6 * bound
            axis.text(j, i, cell_text(row["cells"][strategy]), ha="center", va="center",
                      fontsize=8, color="white" if strong else "black")
    axis.set_xticks(range(len(strategies)),
                    [f"{m}\n[{record['access'][m]}]" for m in strategies], fontsize=8)
    axis.set_yticks(range(len(rows)), [row["defence"] for row in rows], fontsize=8)
    base = record["reference"] or record["alone"]
    base_name = record["reference_label"] if record["reference"] else "alone"
    base_text = f", {base['acc']['mean']:.1f}" if base and base["acc"] else ""
    axis.set_title(f"student {record['student']} from teacher {record['teacher_model']}: accuracy "
                   f"(difference to {base_name}{base_text})", fontsize=9)
    figure.colorbar(image, ax=axis, label=f"accuracy minus {base_name} (points)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
