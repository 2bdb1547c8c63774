"""The defence x attack table: per normal teacher and student network, a row per teacher defence
(normal, nasty, stingy, reverse, ...) and a column per student strategy (alone, kd, skeptical,
hard_label, ...), as `reproduce.py experiments/DigitsAttacks` writes it into results.md,
results.json and `attacks_<teacher>_<student>.png`.

A student's row is its teacher's defence: a defended teacher (a stage of a method whose role is
"defended teacher") by its method's label; a normal teacher by the defence the student reads it
through (the method table's `Defence`: its row label, e.g. "stingy (sparse 0.2)"). Its column is
its method's label. Rows and columns are ordered by the ranks the methods and defences declare;
this module names none of them. Each cell is the mean ± std of the best accuracies over the seeds, and its difference
to the same network trained alone; each row also holds the accuracy of the teacher it learns from.
A tree whose students are all plain KD from logits has only the paper's table (repro/report.py).
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
)


def defence_of(student, by_name):
    """((rank, row label), name of the teacher stage whose accuracy the row shows, normal
    teacher's name)."""
    teacher = by_name[student.parent]
    if teacher.method.role == Role.DEFENDED_TEACHER:
        return ((teacher.method.rank, teacher.method.table_label(teacher.params)), teacher.name,
                teacher.parent)
    defence = student.method.defence(student.params) or NO_DEFENCE  # none read: the own outputs
    return (defence.rank, defence.row_label(student.params)), teacher.name, teacher.name


def find_matrices(stages):
    """[{teacher, student label, alone, strategies, rows: [(defence, teacher stage, {strategy:
    stage})]}] for trees with more than the paper's students; [] otherwise."""
    by_name = {s.name: s for s in stages}
    students = [s for s in stages if s.method.role == Role.STUDENT and s.parent in by_name]
    if all(is_paper_student(s) for s in students):
        return []
    found = {}
    for student in students:
        defence, teacher, normal = defence_of(student, by_name)
        if normal is None or by_name[normal].method.role != Role.TEACHER:
            continue
        entry = found.setdefault((normal, model_key(student)), {
            "teacher": normal, "student": model_label(student), "rows": {},
            "alone": alone_stage(stages, student, by_name[normal])})
        row = entry["rows"].setdefault(defence, {"teacher": teacher, "cells": {}})
        column = (student.method.rank, student.method.table_label(student.params))
        row["cells"].setdefault(column, student.name)
    matrices = []
    for entry in found.values():
        columns = sorted({c for row in entry["rows"].values() for c in row["cells"]})
        rows = [(label, row["teacher"], {c[1]: name for c, name in row["cells"].items()})
                for (_, label), row in sorted(entry["rows"].items())]
        strategies = [label for _, label in columns]
        matrices.append({**entry, "strategies": strategies, "rows": rows})
    return matrices


def matrix_record(matrix, stages):
    """The numbers of one matrix (results.json), from collect()'s per-stage records."""
    normal = matrix["teacher"]
    return {"teacher": normal, "teacher_model": stages[normal]["model"],
            "student": matrix["student"], "alone": cell(stages, matrix["alone"]),
            "strategies": matrix["strategies"],
            "rows": [{"defence": label, "teacher": cell(stages, teacher, None if teacher == normal
                                                        else normal),
                      "cells": {m: cell(stages, cells.get(m), matrix["alone"])
                                for m in matrix["strategies"]}}
                     for label, teacher, cells in matrix["rows"]],
            "figures": []}


def render_matrix(record, seeds):
    expected = len(seeds or [None])
    strategies = record["strategies"]
    lines = [f"## Defences × student strategies: teacher {record['teacher_model']} "
             f"(`{record['teacher']}`), student {record['student']}", "",
             "| Teacher defence | Teacher accuracy | alone | " + " | ".join(strategies) + " |",
             "| --- | --- | --- |" + " --- |" * len(strategies)]
    alone = fmt(record["alone"]["acc"], expected)
    for row in record["rows"]:
        cells = [fmt_cell(row["cells"][m], expected) if row["cells"][m]["stage"] else MISSING
                 for m in strategies]
        lines.append(f"| {row['defence']} | {fmt_cell(row['teacher'], expected)} | {alone} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Teacher accuracy: of the teacher the row's students learn from (in parentheses: "
              "minus the normal teacher's). A cell: the student's accuracy and, in parentheses, "
              "minus the same network trained alone.", ""]
    lines += [f"![{name.rsplit('.', 1)[0]}]({name})" for name in record["figures"]]
    return lines + ([""] if record["figures"] else [])


def draw_matrix(plt, path, record):
    """Heat map of the differences to the student alone (red: the defence costs the student)."""
    rows, strategies = record["rows"], record["strategies"]
    deltas = [[row["cells"][m]["delta"] for m in strategies] for row in rows]
    bound = max([abs(d) for line in deltas for d in line if d is not None] + [1.0])
    figure, axis = plt.subplots(figsize=(1.9 * len(strategies) + 2.5, 0.8 * len(rows) + 1.6))
    colours = plt.get_cmap("RdBu").with_extremes(bad="0.85")  # no run: grey, not "no difference"
    values = [[float("nan") if d is None else d for d in line] for line in deltas]
    image = axis.imshow(values, cmap=colours, vmin=-bound, vmax=bound, aspect="auto")
    for i, row in enumerate(rows):
        for j, strategy in enumerate(strategies):
            entry = row["cells"][strategy]
            text = MISSING if entry["acc"] is None else f"{entry['acc']['mean']:.1f}"
            if entry["delta"] is not None:
                text += f"\n({entry['delta']:+.1f})"
            strong = entry["delta"] is not None and abs(entry["delta"]) > 0.6 * bound
            axis.text(j, i, text, ha="center", va="center", fontsize=8,
                      color="white" if strong else "black")
    axis.set_xticks(range(len(strategies)), strategies, fontsize=8)
    axis.set_yticks(range(len(rows)), [row["defence"] for row in rows], fontsize=8)
    alone = record["alone"]["acc"]
    alone_text = f", {alone['mean']:.1f}" if alone else ""
    axis.set_title(f"student {record['student']} from teacher {record['teacher_model']}: accuracy "
                   f"(difference to alone{alone_text})", fontsize=9)
    figure.colorbar(image, ax=axis, label="accuracy minus alone (points)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
