"""What the results tables share (repro/report.py: the paper's table; repro/matrix.py: defences x
student strategies): statistics over seeds, cells, labels, and which stages a table holds. Every
method-specific choice comes from the method table's declarations (methods/base.py)."""
from methods.base import Role

MISSING = "—"


def stats(values):
    """{'mean', 'std' (sample; None for one value), 'n', 'values'}, or None without values."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def model_key(stage):
    name = stage.params.model_name
    return name, tuple(sorted(stage.params.model_options(name).items())), stage.params.dataset


def model_label(stage):
    channels = stage.params.num_channels
    return stage.params.model_name + (f" ({channels} ch.)" if channels else "")


def is_paper_student(stage):
    """A student of the paper's table: of a method that declares it (plain KD), from the teacher's
    own outputs (the other strategies and defences go to the defence x strategy matrix)."""
    return stage.method.role == Role.STUDENT and stage.method.in_paper_table(stage.params)


def alone_stage(stages, student, teacher):
    """The scratch run of the student's network: the one in a folder of the student's folder name
    (baseline/cnn for kd_normal_resnet18/cnn) first, then one that is not this group's teacher."""
    same = [s for s in stages if s.method.role == Role.TEACHER and not s.method.reference
            and model_key(s) == model_key(student)]
    leaf = student.name.rsplit("/", 1)[-1]
    same.sort(key=lambda s: (s.name.rsplit("/", 1)[-1] != leaf, teacher is not None and s is teacher))
    return same[0].name if same else None


def reference_stage(stages, student):
    """The run of the student's network by the method that declares itself the reference (a
    student alone with label smoothing), or None."""
    same = [s for s in stages if s.method.reference and model_key(s) == model_key(student)]
    return same[0].name if same else None


def cell(stages, name, baseline=None):
    """{'stage', 'acc', 'delta'}: a stage's accuracy and its difference to `baseline`'s."""
    acc = stages[name]["best_acc"] if name else None
    base = stages[baseline]["best_acc"] if baseline else None
    delta = acc["mean"] - base["mean"] if acc and base else None
    return {"stage": name, "acc": acc, "delta": delta}


def fmt(acc, expected=1):
    """'98.61', '98.42 ± 0.32', with '(2 of 3 seeds)' when seeds are missing; '—' without runs."""
    if not acc:
        return MISSING
    text = f"{acc['mean']:.2f}" + ("" if acc["std"] is None else f" ± {acc['std']:.2f}")
    return text + (f" ({acc['n']} of {expected} seeds)" if acc["n"] < expected else "")


def fmt_cell(entry, expected):
    text = fmt(entry["acc"], expected)
    return text if entry["delta"] is None else f"{text} ({entry['delta']:+.2f})"
