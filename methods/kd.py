"""Knowledge distillation from a frozen teacher, normal or nasty (train_kd.py).

alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE; the teacher's test accuracy is logged
before training, as the original did. `teacher_output` applies a defence to a normal teacher's
logits first: "sparse" (the stingy teacher: the top int(sparse_ratio * classes) logits, the rest
-inf) or "reverse" (the top logit kept, the others in reversed rank order).

The teacher keys, the defence keys and the teacher-accuracy line are shared by every student
strategy (methods/hard_label.py, methods/skeptical.py).
"""
from functools import partial

from utils.data import DATASETS
from utils.evaluation import evaluate
from utils.losses import TEACHER_OUTPUTS, defended_logits, kd_loss, sparse_keep
from utils.schema import FLOAT, MODEL, REQUIRED, STR, Key, bounds, one_of

from .base import STUDENT, TEMPERATURE, AgainstFrozen, Frozen, Method, register

TEACHER_KEYS = (
    Key("teacher_model", MODEL, REQUIRED, "the network the student distils from"),
    Key("teacher_resume", STR, REQUIRED, "checkpoint of the teacher"))
ALPHA = Key("alpha", FLOAT, REQUIRED, "weight of the distillation term against the hard labels",
            bounds(low=0, high=1))
DEFENCE_KEYS = (
    Key("teacher_output", STR, "logits", "what the teacher hands out: its logits, 'sparse' (stingy "
        "teacher) or 'reverse' (reversed ranks below the top class)",
        one_of(TEACHER_OUTPUTS, "teacher output")),
    Key("sparse_ratio", FLOAT, 1.0, "teacher_output 'sparse': the share of the classes whose "
        "logits are kept, int(ratio * classes) of them", bounds(low=0, low_open=True, high=1)))
TEACHER = Frozen("teacher", "teacher_model", "teacher_resume")


def check_defence(values):
    """A stingy teacher that keeps no logit would give NaN soft labels: refuse it up front."""
    if values.get("teacher_output") != "sparse" or values.get("dataset") not in DATASETS:
        return []
    classes = DATASETS[values["dataset"]].num_classes
    if sparse_keep(classes, values["sparse_ratio"]) < 1:
        return [f"sparse_ratio = {values['sparse_ratio']} keeps int({values['sparse_ratio']} * "
                f"{classes}) = 0 of the {classes} logits; give at least {1 / classes:g}"]
    return []


def log_teacher_accuracy(run, frozen):
    metrics = evaluate(frozen["teacher"], run.test_loader, run.precision)
    run.log.info(f"- Teacher Model Eval metrics : acc: {metrics['acc']:05.3f} ; "
                 f"loss: {metrics['loss']:05.3f}")


def teacher_defence(params):
    """The teacher's logits -> what its defence (teacher_output) hands the student."""
    return partial(defended_logits, teacher_output=params.teacher_output,
                   sparse_ratio=params.sparse_ratio)


def from_teacher(params, teacher, loss, **hyper):
    """A student loss against the teacher's logits as its defence hands them out."""
    return AgainstFrozen("teacher", teacher, loss, transform=teacher_defence(params), **hyper)


def build(params, frozen):
    return from_teacher(params, frozen["teacher"], kd_loss, T=params.temperature, alpha=params.alpha)


register(Method(
    name="kd", script="kd", role=STUDENT, build=build,
    summary="knowledge distillation: KL to the teacher's softened outputs plus cross-entropy",
    keys=(TEMPERATURE, *TEACHER_KEYS, ALPHA, *DEFENCE_KEYS),
    frozen=(TEACHER,),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("kl", "Train KD (KL) loss")),
    implied_by="teacher_resume", on_start=log_teacher_accuracy, check=check_defence))
