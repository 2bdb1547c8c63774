"""FitNet hints (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets"), run by
train_kd.py with `"method": "fitnet"`, as HobbitLong/RepDistiller trains it (`--distill hint
-r 1 -a 0 -b 100`): jointly, from the start,

    ce_weight * CE + hint_weight * MSE(regressor(student stage hint_stage), teacher stage)

The teacher stage is `hint_teacher_stage`, or without it the one at the same relative depth
(methods/feature_kd.py). The regressor is
RepDistiller's: a 3x3 stride-2 convolution when the student's map is twice the teacher's, a 4x4
stride-2 transposed convolution when it is half, else a (1 + dH) x (1 + dW) convolution (1x1 for
equal sizes), then batch norm and ReLU. It belongs to the objective: it trains with the student,
under its optimizer, and is saved apart (`objective_state_dict`), so `best_model.tar` is the plain
student network. The hint reads the teacher's weights (its intermediate features): a defence of
its outputs does not apply (threat model "weights").
"""
import torch.nn as nn
import torch.nn.functional as F

from utils.base.errors import ConfigError
from utils.base.schema import FLOAT, INT, Key, bounds

from .base import Access, Method, register
from .feature_kd import AgainstTeacherFeatures, relative_stage
from .kd import CE_WEIGHT, STUDENT, TEACHER_KEYS

HINT_STAGE = Key("hint_stage", INT, 1, "the student's stage (0-based, shallow to deep) that learns "
                 "the teacher's; 1 is RepDistiller's hint_layer 2, which counts the stem as 0",
                 bounds(low=0))
HINT_TEACHER_STAGE = Key("hint_teacher_stage", INT, None, "the teacher's stage the hint learns "
                         "(0-based); without it, the one at the hint stage's relative depth",
                         bounds(low=0))
HINT_WEIGHT = Key("hint_weight", FLOAT, 100.0, "weight of the hint (MSE) term", bounds(low=0))


def regressor(student_shape, teacher_shape):
    """The student's hint map (C, H, W) -> the teacher's, or a one-line error where none fits."""
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student_shape, teacher_shape
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif (2 * s_h, 2 * s_w) == (t_h, t_w):
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h and s_w >= t_w:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise ConfigError(f"method 'fitnet': no regressor from the student's {s_h}x{s_w} hint map "
                          f"to the teacher's {t_h}x{t_w} (smaller, and not half its size); "
                          f"choose another hint_stage")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU())


def fitnet_loss(student_logits, hint, teacher_hint, labels, weight, ce_weight):
    """ce_weight * CE + weight * mean squared error between the regressed hint and the teacher's."""
    ce = F.cross_entropy(student_logits, labels)
    mse = F.mse_loss(hint, teacher_hint.detach())
    return {"loss": ce_weight * ce + weight * mse, "ce": ce, "hint": mse}


class FitNet(AgainstTeacherFeatures):
    def __init__(self, params, teacher):
        super().__init__("fitnet", params, teacher)
        shapes, teacher_shapes = self.shapes, self.teacher_shapes
        if params.hint_stage >= len(shapes):
            raise ConfigError(f"hint_stage = {params.hint_stage} must be < {len(shapes)}: "
                              f"{params.model_name} has {len(shapes)} stages")
        self.stage = params.hint_stage
        self.teacher_stage = params.hint_teacher_stage
        if self.teacher_stage is None:
            self.teacher_stage = relative_stage(self.stage, len(shapes), len(teacher_shapes))
        elif self.teacher_stage >= len(teacher_shapes):
            raise ConfigError(f"hint_teacher_stage = {self.teacher_stage} must be < "
                              f"{len(teacher_shapes)}: {params.teacher_model} has "
                              f"{len(teacher_shapes)} stages")
        self.regressor = regressor(shapes[self.stage], teacher_shapes[self.teacher_stage])
        self.weight, self.ce_weight = params.hint_weight, params.ce_weight

    def forward(self, model, images, labels, step):
        logits, stages, teacher_stages = self.features(model, images)
        hint = self.regressor(stages[self.stage])
        return logits, fitnet_loss(logits, hint, teacher_stages[self.teacher_stage], labels,
                                   self.weight, self.ce_weight)


register(Method(
    name="fitnet", script="kd", build=lambda params, frozen: FitNet(params, frozen["teacher"]),
    **{**STUDENT, "defended": False, "access": Access.WEIGHTS},
    summary="FitNet: a regressor from a student stage to the teacher's, MSE, jointly with CE",
    keys=(*TEACHER_KEYS, HINT_STAGE, HINT_TEACHER_STAGE, HINT_WEIGHT, CE_WEIGHT), terms=("ce", "hint"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("hint", "Train hint (MSE) loss")),
    rank=40, setting=lambda params: (f"stage {params.hint_stage} -> "
                                     f"{'auto' if params.hint_teacher_stage is None else params.hint_teacher_stage}, "
                                     f"weight {params.hint_weight:g}")))
