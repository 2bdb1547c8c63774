"""The skeptical student (Kundu et al., NeurIPS 2021, "Analyzing the Confidentiality of Undistillable
Teachers in Knowledge Distillation"), run by train_kd.py with `"method": "skeptical"`.

The student gets an auxiliary classifier on each of its stages but the last: an attention mask
(a separable-convolution block, batch norm, ReLU, back to the stage's size, sigmoid) multiplies the
stage's output, a stack of separable-convolution blocks carries it to the last stage's channels
(stride 2 wherever the network's own stages shrink), then average pooling and a linear layer. The
heads' logits are ordered [final, deepest auxiliary, ..., shallowest], as the authors order them,
and the loss (skeptical_loss) distils the teacher into head `loc` after `kd_delay`
epochs of cross-entropy alone (CE only while epoch <= kd_delay, 0-based, as their `epoch > kd_delay`).

The deployed student is the final head, the network itself: best_model.tar holds its plain
state_dict (a teacher here and in the original code); the heads are saved apart, in
`objective_state_dict`, for resume. For resnet* this is the authors' construction exactly; for
mobilenetv2 their taps (stage2, stage4, stage6), channel paths (to 1280), stride-1 attention and
5x5 average pooling; every other family gets the resnet construction on its own stages.
"""
from typing import NamedTuple, Tuple

import torch.nn as nn
import torch.nn.functional as F

import nets
from utils.base.schema import INT, Key, bounds
from utils.data.registry import DATASETS

from .base import TEMPERATURE, AgainstFrozen, Method, register, teacher_answers
from .feature_kd import student_shapes
from .kd import ALPHA, STUDENT, TEACHER_CACHE, TEACHER_KEYS, distillation_setting, soft_kl


def skeptical_loss(outputs, teacher_logits, labels, T, alpha, loc, distill):
    """The skeptical student's loss (Kundu et al., NeurIPS 2021) over its heads' logits `outputs`,
    ordered [final, deepest auxiliary, ..., shallowest]:

        alpha * T^2 * KL(teacher || outputs[loc]) + (1 - alpha) * CE(outputs[loc])
        + 0.3 * KL(outputs[0] || outputs[1]) at T (no T^2; both sides trained)
        + 0.7 * CE(outputs[1]) + CE(outputs[0])

    or CE(outputs[0]) alone while `distill` is False (the first kd_delay + 1 epochs).
    """
    final, first_aux = outputs[0], outputs[1]
    ce = F.cross_entropy(final, labels)
    kl = soft_kl(teacher_logits, outputs[loc], T)
    ce_loc = F.cross_entropy(outputs[loc], labels)
    self_kl = F.kl_div(F.log_softmax(first_aux / T, dim=1), F.softmax(final / T, dim=1),
                       reduction="batchmean")
    ce_aux = F.cross_entropy(first_aux, labels)
    total = (alpha * kl + (1.0 - alpha) * ce_loc + 0.3 * self_kl + 0.7 * ce_aux + ce
             if distill else ce)
    return {"loss": total, "ce": ce, "kl": kl, "ce_loc": ce_loc, "self_kl": self_kl, "ce_aux": ce_aux}


class SepConv(nn.Sequential):
    """Depthwise 3x3 (stride s) + pointwise, BN, ReLU, depthwise 3x3 + pointwise, BN, ReLU."""

    def __init__(self, channels_in, channels_out, stride):
        super().__init__(
            nn.Conv2d(channels_in, channels_in, 3, stride, 1, groups=channels_in, bias=False),
            nn.Conv2d(channels_in, channels_in, 1, bias=False), nn.BatchNorm2d(channels_in),
            nn.ReLU(),
            nn.Conv2d(channels_in, channels_in, 3, 1, 1, groups=channels_in, bias=False),
            nn.Conv2d(channels_in, channels_out, 1, bias=False), nn.BatchNorm2d(channels_out),
            nn.ReLU())


class Tap(NamedTuple):
    stage: int                       # index into nets.stage_names(model)
    path: Tuple[Tuple[int, int], ...]  # (channels, stride) of each SepConv to the classifier
    attention_stride: int            # 2: the mask is computed at half size and upsampled back
    pool: int                        # 0: global average; k: AvgPool2d(k, k) as the authors wrote it


class Head(nn.Module):
    def __init__(self, shape, tap, num_classes):
        super().__init__()
        channels, height, width = shape
        attention = [SepConv(channels, channels, tap.attention_stride), nn.BatchNorm2d(channels),
                     nn.ReLU()]
        if tap.attention_stride > 1:
            attention.append(nn.Upsample(size=(height, width), mode="bilinear"))
        self.attention = nn.Sequential(*attention, nn.Sigmoid())
        blocks, current = [], channels
        for out, stride in tap.path:
            blocks.append(SepConv(current, out, stride))
            current = out
        self.scala = nn.Sequential(*blocks, nn.AvgPool2d(tap.pool) if tap.pool else nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x):
        return self.fc(self.scala(self.attention(x) * x).flatten(1))


def generic_taps(shapes):
    """Every stage but the last, carried through the later stages' channels (the resnet heads)."""
    taps = []
    for index in range(len(shapes) - 1):
        path, size = [], shapes[index][1]
        for channels, height, _ in shapes[index + 1:]:
            path.append((channels, 2 if height < size else 1))
            size = height
        taps.append(Tap(index, tuple(path), 2, 0))
    return taps


# the authors' MobileNetV2_self: stage2, stage4 and stage6 (our stage indices 1, 3, 5)
MOBILENETV2_TAPS = (
    Tap(1, ((64, 2), (160, 1), (320, 1), (640, 1), (1280, 1)), 1, 5),
    Tap(3, ((160, 1), (320, 1), (640, 1), (1280, 1)), 1, 5),
    Tap(5, ((320, 1), (640, 1), (1280, 1)), 1, 5))


def taps_for(name, shapes, input_size=32):
    if name != "mobilenetv2":
        return generic_taps(shapes)
    # the authors pool 5x5 on their 32x32 inputs; on other sizes: a global average, as theirs means
    return [t if input_size == 32 else t._replace(pool=0) for t in MOBILENETV2_TAPS]


class Skeptical(AgainstFrozen):
    """The student's heads (owned, trained, checkpointed apart) and the skeptical loss."""

    def __init__(self, params, teacher):
        super().__init__("teacher", teacher, skeptical_loss, transform=teacher_answers(params, teacher))
        shapes = student_shapes(vars(params))
        self.taps = taps_for(params.model_name, shapes, params.input_size)
        self.heads = nn.ModuleList(Head(shapes[t.stage], t, params.num_classes) for t in self.taps)
        if params.model_name != "mobilenetv2":  # the authors' resnet initialisation
            for module in self.heads.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.T, self.alpha, self.loc, self.delay = (params.temperature, params.alpha, params.loc,
                                                    params.kd_delay)

    def forward(self, model, images, labels, step):
        teacher_logits = self.frozen_logits(images, step)
        logits, stages = nets.forward_features(model, images)
        auxiliary = [head(stages[tap.stage]) for tap, head in zip(self.taps, self.heads)]
        outputs = [logits] + auxiliary[::-1]  # [final, deepest auxiliary, ..., shallowest]
        return logits, skeptical_loss(outputs, teacher_logits, labels, self.T, self.alpha, self.loc,
                                      distill=step.epoch > self.delay)


def check_skeptical(values):
    shapes = student_shapes(values)
    if any(len(shape) != 3 for shape in shapes) or len(shapes) < 2:
        return [f"method 'skeptical' needs a convolutional student with two or more "
                           f"stages; {values['model_name']!r} has stage outputs {shapes}"]
    heads = len(taps_for(values["model_name"], shapes, DATASETS[values["dataset"]].input_size))
    if values["loc"] > heads:
        return [f"loc = {values['loc']} must be <= {heads}: {values['model_name']} has "
                f"{heads} auxiliary heads (0 is the final one)"]
    return []


register(Method(
    name="skeptical", script="kd", **STUDENT,
    build=lambda params, frozen: Skeptical(params, frozen["teacher"]),
    summary="skeptical student: auxiliary heads on its stages, the teacher distilled into one of them",
    keys=(TEMPERATURE, *TEACHER_KEYS, ALPHA,
          Key("loc", INT, 1, "the head the teacher is distilled into: 0 the final one, 1 the "
              "deepest auxiliary head, ...", bounds(low=0)),
          Key("kd_delay", INT, 0, "epochs of cross-entropy alone before distilling (distils while "
              "epoch > kd_delay, 0-based, as the authors' code)", bounds(low=0)), TEACHER_CACHE),
    terms=("ce", "kl", "ce_loc", "self_kl", "ce_aux"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("kl", "Train KD (KL) loss")),
    check=check_skeptical, rank=10, defence_after="alpha", setting=distillation_setting,
    temperature=lambda params: params.temperature))
