"""A student trained alone with label smoothing (Szegedy et al., CVPR 2016), run by
train_scratch.py with `"method": "label_smoothing"`: the reference a defence is judged against.

A poisoned teacher can act as a mere regulariser, so the newer defence papers compare a student of
a defended teacher with a student trained alone with label smoothing 0.1, not with plain
cross-entropy. The defence x strategy matrix (repro/matrix.py) reads this method as its
`reference` column and gives each cell its verdict against it.
"""
import torch.nn.functional as F

from utils.base.schema import FLOAT, Key, bounds

from .base import Method, Objective, Role, register

SMOOTHING = Key("label_smoothing", FLOAT, 0.1, "share of each label spread evenly over all the "
                "classes (0: plain cross-entropy)", bounds(low=0, high=1, high_open=True))


def smoothed_ce_loss(logits, labels, smoothing):
    """CE against (1 - smoothing) * one-hot + smoothing / classes; the plain CE is reported."""
    smoothed = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    return {"loss": smoothed, "smoothed_ce": smoothed, "ce": F.cross_entropy(logits.detach(), labels)}


class SmoothedCrossEntropy(Objective):
    def __init__(self, smoothing):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, model, images, labels, step):
        logits = model(images)
        return logits, smoothed_ce_loss(logits, labels, self.smoothing)


register(Method(
    name="label_smoothing", script="scratch", role=Role.TEACHER,
    build=lambda params, frozen: SmoothedCrossEntropy(params.label_smoothing),
    summary="cross-entropy with smoothed labels: the student-alone reference of the matrix",
    keys=(SMOOTHING,), terms=("smoothed_ce", "ce"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss")), reference=True,
    label=lambda params: f"label smoothing ({params.label_smoothing:g})",
    setting=lambda params: f"smoothing {params.label_smoothing:g}"))
