"""A hard-label student (train_kd.py): cross-entropy with the teacher's argmax as the label.

It ignores the soft outputs, so it is what any defence that keeps the teacher's argmax (nasty,
stingy, reverse) cannot spoil; what it learns is bounded by the teacher's accuracy. Keys: the
teacher's (teacher_model, teacher_resume) and the defence keys; temperature and alpha do not apply.
"""
from utils.losses import hard_label_loss

from .base import STUDENT, Method, register
from .kd import DEFENCE_KEYS, TEACHER, TEACHER_KEYS, check_defence, from_teacher, log_teacher_accuracy

register(Method(
    name="hard_label", script="kd", role=STUDENT,
    build=lambda params, frozen: from_teacher(params, frozen["teacher"], hard_label_loss),
    summary="cross-entropy with the teacher's argmax as the label",
    keys=(*TEACHER_KEYS, *DEFENCE_KEYS), frozen=(TEACHER,), terms=("hard", "ce"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss")),
    on_start=log_teacher_accuracy, check=check_defence))
