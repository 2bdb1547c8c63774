"""Cross-entropy training: a normal teacher, or a student trained alone (train_scratch.py)."""
from utils.losses import ce_loss

from .base import TEACHER, Method, Objective, register


class CrossEntropy(Objective):
    def forward(self, model, images, labels, at):
        logits = model(images)
        return logits, ce_loss(logits, labels)


register(Method(
    name="scratch", script="scratch", role=TEACHER,
    build=lambda params, frozen: CrossEntropy(),
    summary="cross-entropy with the labels (a normal teacher, or a student alone)",
    terms=("ce",)))
