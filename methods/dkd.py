"""Decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"),
run by train_kd.py with `"method": "dkd"`.

The KD term is split into the target-class part and the non-target part, which is what a nasty
teacher's soft outputs poison:

    ce_weight * CE + min((epoch + 1) / dkd_warmup, 1) * (dkd_alpha * TCKD + dkd_beta * NCKD)

TCKD: T^2 * KL of the binary (target, rest) probabilities at temperature T; NCKD: T^2 * KL of the
distributions over the non-target classes alone (the target class removed, then a softmax); both
summed over classes and divided by the batch size. The warm-up counts epochs from 1 as
megvii-research/mdistiller does (our epochs are 0-based), so the first epoch has weight
1 / dkd_warmup. Defaults: theirs for CIFAR-100 (alpha 1, beta 8, T 4, warm-up 20 epochs, CE 1).
The teacher's logits reach the student through the run's defence (`teacher_output`).
"""
import torch
import torch.nn.functional as F

from utils.base.schema import FLOAT, INT, Key, bounds

from .base import TEMPERATURE, Method, register
from .kd import CE_WEIGHT, STUDENT, TEACHER_CACHE, TEACHER_KEYS, from_teacher

KEYS = (
    TEMPERATURE, *TEACHER_KEYS,
    Key("dkd_alpha", FLOAT, 1.0, "weight of the target-class term TCKD (DKD's alpha)",
        bounds(low=0)),
    Key("dkd_beta", FLOAT, 8.0, "weight of the non-target-class term NCKD (DKD's beta)",
        bounds(low=0)),
    Key("dkd_warmup", INT, 20, "epochs over which the DKD terms' weight rises linearly to 1",
        bounds(low=1)),
    CE_WEIGHT, TEACHER_CACHE)


def binary_log_probs(logits, target_mask, T):
    """log of (p_target, p_rest) at temperature T, from log-sum-exps (no log of a rounded 0)."""
    scaled = logits / T
    whole = torch.logsumexp(scaled, dim=1, keepdim=True)
    target = scaled.masked_fill(~target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    rest = scaled.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([target, rest], dim=1) - whole


def non_target(logits, target_mask):
    """The logits without the target class: (N, C - 1), classes in their order."""
    return logits[~target_mask].view(logits.shape[0], -1)


def rowwise_kl(log_target, log_input):
    """KL(target || input) per row, from log-probabilities; 0 * log 0 counts as 0."""
    target = log_target.exp()
    return torch.where(target > 0, target * (log_target - log_input), 0.0).sum(dim=1)


def dkd_loss(student_logits, teacher_logits, labels, T, alpha, beta, warm, ce_weight):
    """ce_weight * CE + warm * (alpha * TCKD + beta * NCKD); `warm` is the warm-up factor.

    A teacher row whose non-target logits are all -inf (a defence that keeps only the target)
    says nothing about the other classes: its NCKD is 0.
    """
    teacher_logits = teacher_logits.detach()
    mask = F.one_hot(labels, student_logits.shape[1]).bool()
    batch = student_logits.shape[0]
    tckd = rowwise_kl(binary_log_probs(teacher_logits, mask, T),
                      binary_log_probs(student_logits, mask, T)).sum() * T * T / batch
    teacher_rest = non_target(teacher_logits, mask) / T
    informative = torch.isfinite(teacher_rest).any(dim=1)
    teacher_rest = torch.where(informative[:, None], teacher_rest, 0.0)
    per_row = rowwise_kl(F.log_softmax(teacher_rest, dim=1),
                         F.log_softmax(non_target(student_logits, mask) / T, dim=1))
    nckd = torch.where(informative, per_row, 0.0).sum() * T * T / batch
    ce = F.cross_entropy(student_logits, labels)
    total = ce_weight * ce + warm * (alpha * tckd + beta * nckd)
    return {"loss": total, "ce": ce, "tckd": tckd, "nckd": nckd,
            "warmup": student_logits.new_full((), float(warm))}  # a fill, no host copy


def warmup_factor(epoch, warmup):
    """min(epoch / warmup, 1) with epochs counted from 1 (mdistiller's); `epoch` is 0-based."""
    return min((epoch + 1) / warmup, 1.0)


def build(params, frozen):
    return from_teacher(params, frozen["teacher"], dkd_loss, T=params.temperature,
                        alpha=params.dkd_alpha, beta=params.dkd_beta, ce_weight=params.ce_weight,
                        per_step=lambda step: {"warm": warmup_factor(step.epoch,
                                                                     params.dkd_warmup)})


register(Method(
    name="dkd", script="kd", build=build, **STUDENT,
    summary="decoupled KD: target-class and non-target-class KL terms, weighted apart, warmed up",
    keys=KEYS, terms=("ce", "tckd", "nckd", "warmup"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("tckd", "Train TCKD loss"),
               ("nckd", "Train NCKD loss")),
    rank=5, defence_after="teacher_resume",
    setting=lambda params: (f"T={params.temperature:g}, alpha={params.dkd_alpha:g}, "
                            f"beta={params.dkd_beta:g}, warm-up {params.dkd_warmup}"),
    temperature=lambda params: params.temperature))
