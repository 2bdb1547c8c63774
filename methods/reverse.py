"""The reverse teacher (the stingy teacher's authors), a defence of a normal teacher:
`"teacher_output": "reverse"` keeps the top logit and reverses the ranks of the others. It keeps
the argmax, so the teacher's accuracy is unchanged.
"""
import torch

from .base import Defence, register_defence


def reverse_logits(logits):
    """The largest logit stays; the others swap ranks: the 2nd most likely class gets the smallest
    value, the 3rd the second smallest, ... (the authors' reverse teacher)."""
    values, index = logits.sort(dim=1, descending=True)
    reordered = torch.cat([values[:, :1], values[:, 1:].flip(1)], dim=1)
    return torch.empty_like(logits).scatter(1, index, reordered)


register_defence(Defence(
    name="reverse", summary="the top logit kept, the others in reversed rank order",
    transform=lambda logits, params: reverse_logits(logits), rank=30))
