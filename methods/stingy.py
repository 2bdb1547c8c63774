"""The stingy teacher (Ma et al., ICLR 2022 workshop, "Sparse Logits Suffice to Fail Knowledge
Distillation"), a defence of a normal teacher: `"teacher_output": "sparse"` keeps the top
int(sparse_ratio * classes) logits and sets the rest to -inf. It keeps the argmax, so the
teacher's accuracy is unchanged.
"""
import torch

from utils.base.schema import FLOAT, Key, bounds

from .base import Defence, register_defence

SPARSE_RATIO = Key("sparse_ratio", FLOAT, 1.0, "teacher_output 'sparse': the share of the classes "
                   "whose logits are kept, int(ratio * classes) of them",
                   bounds(low=0, low_open=True, high=1))


def sparse_keep(num_classes, sparse_ratio):
    """How many logits a stingy teacher keeps: int(ratio * classes), as the authors compute it."""
    return int(sparse_ratio * num_classes)


def sparse_logits(logits, keep):
    """The `keep` largest logits of each row; every other one is -inf (probability 0 at any T)."""
    values, index = logits.topk(keep, dim=1)
    return torch.full_like(logits, float("-inf")).scatter(1, index, values)


def check_keep(values, num_classes):
    """A stingy teacher that keeps no logit would give NaN soft labels: refuse it up front."""
    ratio = values["sparse_ratio"]
    if sparse_keep(num_classes, ratio) < 1:
        return [f"sparse_ratio = {ratio} keeps int({ratio} * {num_classes}) = 0 of the "
                f"{num_classes} logits; give at least {1 / num_classes:g}"]
    return []


register_defence(Defence(
    name="sparse", summary="the stingy teacher: its top logits only, the rest -inf",
    transform=lambda logits, params: sparse_logits(logits, sparse_keep(logits.shape[1],
                                                                       params.sparse_ratio)),
    label=lambda params: f"stingy (sparse {params.sparse_ratio:g})",
    keys=(SPARSE_RATIO,), check=check_keep, rank=20))
