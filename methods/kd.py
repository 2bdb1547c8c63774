"""Knowledge distillation from a frozen teacher, normal or nasty (train_kd.py).

alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE; the teacher's test accuracy is logged
before training, as the original did.
"""
from utils.losses import kd_loss
from utils.schema import FLOAT, MODEL, REQUIRED, STR, Key, bounds

from .base import STUDENT, TEMPERATURE, AgainstFrozen, Frozen, Method, register

TEACHER_KEYS = (
    Key("teacher_model", MODEL, REQUIRED, "the network the student distils from"),
    Key("teacher_resume", STR, REQUIRED, "checkpoint of the teacher"))
ALPHA = Key("alpha", FLOAT, REQUIRED, "weight of the distillation term against the hard labels",
            bounds(low=0, high=1))
TEACHER = Frozen("teacher", "teacher_model", "teacher_resume")


def log_teacher_accuracy(run, frozen):
    from utils.engine import evaluate  # the engine imports the table, not the other way round
    metrics = evaluate(frozen["teacher"], run.test_loader, run.precision)
    run.log.info(f"- Teacher Model Eval metrics : acc: {metrics['acc']:05.3f} ; "
                 f"loss: {metrics['loss']:05.3f}")


def build(params, frozen):
    return AgainstFrozen("teacher", frozen["teacher"], kd_loss, T=params.temperature,
                         alpha=params.alpha)


register(Method(
    name="kd", script="kd", role=STUDENT, build=build,
    summary="knowledge distillation: KL to the teacher's softened outputs plus cross-entropy",
    keys=(TEMPERATURE, *TEACHER_KEYS, ALPHA),
    frozen=(TEACHER,),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("kl", "Train KD (KL) loss")),
    implied_by="teacher_resume", on_start=log_teacher_accuracy))
