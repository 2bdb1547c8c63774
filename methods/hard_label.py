"""A hard-label student (train_kd.py): cross-entropy with the teacher's argmax as the label.

It ignores the soft outputs, so it is what any defence that keeps the teacher's argmax (nasty,
stingy, reverse) cannot spoil; what it learns is bounded by the teacher's accuracy. Keys: the
teacher's (teacher_model, teacher_resume) and the defence keys; temperature and alpha do not apply.
"""
import torch.nn.functional as F

from .base import Method, register
from .kd import STUDENT, TEACHER_CACHE, TEACHER_KEYS, from_teacher


def hard_label_loss(student_logits, teacher_logits, labels):
    """CE with the teacher's argmax as the label (a student that ignores the soft outputs); the
    CE with the true labels is reported, not trained on."""
    hard = F.cross_entropy(student_logits, teacher_logits.argmax(1))
    return {"loss": hard, "hard": hard, "ce": F.cross_entropy(student_logits.detach(), labels)}


register(Method(
    name="hard_label", script="kd", **STUDENT,
    build=lambda params, frozen: from_teacher(params, frozen["teacher"], hard_label_loss),
    summary="cross-entropy with the teacher's argmax as the label",
    keys=(*TEACHER_KEYS, TEACHER_CACHE), terms=("hard", "ce"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss")), rank=20))
