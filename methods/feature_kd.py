"""What the feature-distillation students (methods/fitnet.py, methods/at.py) share: the stage
outputs of both networks (nets.forward_features), their shapes, and which stages are paired.

Stage pairs by relative depth: with `n` student stages and `m` teacher stages, the shorter list is
taken whole and each of its stages meets the stage of the longer list at the same relative depth,
floor(i * (long - 1) / (short - 1) + 1/2) (the last meets the last; one stage meets the deepest). With
equal counts, as RepDistiller's CIFAR pairs, stage i meets stage i. Maps of different sizes are
matched by each method (FitNet's regressor; attention transfer pools the larger map).
"""
import torch

import nets
from utils.base.errors import ConfigError
from utils.data.registry import DATASETS

from .base import Objective


def student_shapes(values):
    """The stage output shapes of the student network of a config (one sample: C x H x W or F)."""
    required, optional = nets.model_options(values["model_name"])
    options = {k: values[k] for k in required + optional if values.get(k) is not None}
    dataset = DATASETS[values["dataset"]]
    return nets.stage_shapes(values["model_name"], dataset.num_classes, dataset.input_size, **options)


def network_shapes(network, input_size):
    """The stage output shapes of a built (frozen) network, from one forward of a zero image."""
    device = next(network.parameters()).device
    with torch.no_grad():
        _, features = nets.forward_features(network, torch.zeros(1, 3, input_size, input_size,
                                                                 device=device))
    return [tuple(f.shape[1:]) for f in features]


def relative_stage(index, count, other_count):
    """The stage of a network with `other_count` stages at the relative depth of stage `index` of
    one with `count` stages."""
    if count == 1:
        return other_count - 1
    return int(index * (other_count - 1) / (count - 1) + 0.5)  # halves up, not to even


def stage_pairs(student_count, teacher_count):
    """[(student stage, teacher stage)] by relative depth, as many pairs as the shorter list."""
    if student_count <= teacher_count:
        return [(i, relative_stage(i, student_count, teacher_count)) for i in range(student_count)]
    return [(relative_stage(j, teacher_count, student_count), j) for j in range(teacher_count)]


def need_maps(method, who, name, shapes):
    """A one-line error unless every stage output is a C x H x W map."""
    if any(len(shape) != 3 for shape in shapes):
        raise ConfigError(f"method {method!r} needs convolutional stage outputs (C x H x W); the "
                          f"{who} {name!r} has {shapes}")


class AgainstTeacherFeatures(Objective):
    """A loss of the student's stage outputs against the frozen teacher's: both networks' stage
    shapes, checked to be maps, and both networks' stage outputs per batch."""

    def __init__(self, method, params, teacher):
        super().__init__({"teacher": teacher})
        self.shapes = student_shapes(vars(params))
        self.teacher_shapes = network_shapes(teacher, params.input_size)
        need_maps(method, "student", params.model_name, self.shapes)
        need_maps(method, "teacher", params.teacher_model, self.teacher_shapes)

    def features(self, model, images):
        """(student logits, student stage outputs, teacher stage outputs); the teacher's are
        constants (no_grad: they meet the student's in the loss, so they must be ordinary tensors,
        not inference tensors)."""
        with torch.no_grad():
            _, teacher_stages = nets.forward_features(self.frozen["teacher"], images)
        logits, stages = nets.forward_features(model, images)
        return logits, stages, teacher_stages
