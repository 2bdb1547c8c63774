"""Attention transfer (Zagoruyko and Komodakis, ICLR 2017, "Paying More Attention to Attention"),
run by train_kd.py with `"method": "at"`, as HobbitLong/RepDistiller trains it (`--distill
attention -r 1 -a 0 -b 1000`):

    ce_weight * CE + at_weight * sum over stage pairs of mean((a_s - a_t)^2)

with a = the L2-normalised, flattened spatial map mean over channels of |f|^p (p = at_p = 2) of a
stage output f. RepDistiller pairs every stage of both networks (their feature lists without the
stem and the pooled vector); networks with other stage counts are paired by relative depth
(methods/feature_kd.py), and of two maps of different sizes the larger is average-pooled to the
smaller's (as RepDistiller). Attention maps do not depend on channels, so no head is trained. It
reads the teacher's intermediate features: a defence of its outputs does not apply (threat model
"weights").
"""
import torch.nn.functional as F

from utils.base.schema import FLOAT, Key, bounds

from .base import Access, Method, register
from .feature_kd import AgainstTeacherFeatures, stage_pairs
from .kd import CE_WEIGHT, STUDENT, TEACHER_KEYS

AT_WEIGHT = Key("at_weight", FLOAT, 1000.0, "weight of the attention-transfer term",
                bounds(low=0))
AT_P = Key("at_p", FLOAT, 2.0, "the power p of the attention map mean(|f|^p) over channels",
           bounds(low=0, low_open=True))


def attention_map(features, p):
    """normalise(flatten(mean over channels of |f|^p)): one unit vector per sample."""
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def same_size(student, teacher):
    """The larger of two maps average-pooled to the smaller's height and width."""
    size_s, size_t = student.shape[2:], teacher.shape[2:]
    if size_s == size_t:
        return student, teacher
    if size_s[0] * size_s[1] > size_t[0] * size_t[1]:
        return F.adaptive_avg_pool2d(student, tuple(size_t)), teacher
    return student, F.adaptive_avg_pool2d(teacher, tuple(size_s))


def at_loss(student_logits, student_stages, teacher_stages, labels, p, weight, ce_weight):
    """ce_weight * CE + weight * the sum over the paired stages of mean((a_s - a_t)^2)."""
    ce = F.cross_entropy(student_logits, labels)
    terms = []
    for student, teacher in zip(student_stages, teacher_stages):
        student, teacher = same_size(student, teacher.detach())
        terms.append((attention_map(student, p) - attention_map(teacher, p)).pow(2).mean())
    attention = sum(terms)
    return {"loss": ce_weight * ce + weight * attention, "ce": ce, "attention": attention}


class AttentionTransfer(AgainstTeacherFeatures):
    def __init__(self, params, teacher):
        super().__init__("at", params, teacher)
        self.pairs = stage_pairs(len(self.shapes), len(self.teacher_shapes))
        self.p, self.weight, self.ce_weight = params.at_p, params.at_weight, params.ce_weight

    def forward(self, model, images, labels, step):
        logits, stages, teacher_stages = self.features(model, images)
        return logits, at_loss(logits, [stages[s] for s, _ in self.pairs],
                               [teacher_stages[t] for _, t in self.pairs], labels, self.p,
                               self.weight, self.ce_weight)


register(Method(
    name="at", script="kd", build=lambda params, frozen: AttentionTransfer(params, frozen["teacher"]),
    **{**STUDENT, "defended": False, "access": Access.WEIGHTS},
    summary="attention transfer: the student's spatial attention maps matched to the teacher's",
    keys=(*TEACHER_KEYS, AT_P, AT_WEIGHT, CE_WEIGHT), terms=("ce", "attention"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"),
               ("attention", "Train attention loss")),
    rank=45, label=lambda params: "attention transfer",
    setting=lambda params: f"p={params.at_p:g}, weight {params.at_weight:g}"))
