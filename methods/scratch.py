"""Cross-entropy training: a normal teacher, or a student trained alone (train_scratch.py)."""
import torch.nn.functional as F

from .base import Method, Objective, Role, register


def ce_loss(logits, labels):
    """Plain cross-entropy training (normal teachers and baseline students)."""
    ce = F.cross_entropy(logits, labels)
    return {"loss": ce, "ce": ce}


class CrossEntropy(Objective):
    def forward(self, model, images, labels, step):
        logits = model(images)
        return logits, ce_loss(logits, labels)


register(Method(
    name="scratch", script="scratch", role=Role.TEACHER,
    build=lambda params, frozen: CrossEntropy(),
    summary="cross-entropy with the labels (a normal teacher, or a student alone)",
    terms=("ce",)))
