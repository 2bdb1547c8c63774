"""Reverse sigmoid (Lee et al., "Defending Against NN Model Stealing Attacks Using Deceptive
Perturbations", IEEE S&P workshops 2019), an answer-time defence of a normal teacher:
`"teacher_output": "reverse_sigmoid"` hands out, instead of the probabilities y = softmax(logits),

    y' = normalise(max(y - beta * (sigmoid(gamma * logit(y)) - 1/2), 0))

as log-probabilities, so a student reads softmax(log y' / T) at its own temperature. The
perturbation grows with y, and for small y faster than y itself (its slope is beta * gamma *
s(1 - s) / (y(1 - y)), s the sigmoid), so the ranks of the unlikely classes are reversed and their
mass raised; whether the top class stays on top depends on beta and gamma (the teacher's accuracy
under the defence is logged by every student run and shown in the matrix).

Defaults: beta 1, gamma 0.1, as the adversarial-robustness-toolbox's ReverseSigmoid
(tribhuvanesh/prediction-poisoning's class defaults, beta = gamma = 1, are degenerate: with
gamma 1, sigmoid(logit(y)) = y, so y' = (1 - beta) y + beta / 2, uniform at beta 1).
Normalisation: divided by the row sum, as both; prediction-poisoning does not clip, so its y'
can go negative for beta > 2; we clip at 0 first (as the toolbox does), giving probability 0 (a
log of -inf, which every student reads as the stingy teacher's dropped classes). logit(y) is
log y - log(1 - y) from the log-softmax, so y = 0 or 1 needs no clipping (logit -inf or +inf).
"""
import torch

from utils.base.schema import FLOAT, Key, bounds

from .base import Defence, register_defence

BETA = Key("reverse_sigmoid_beta", FLOAT, 1.0, "teacher_output 'reverse_sigmoid': the size beta of "
           "the perturbation", bounds(low=0))
GAMMA = Key("reverse_sigmoid_gamma", FLOAT, 0.1, "teacher_output 'reverse_sigmoid': the slope gamma "
            "of the sigmoid of logit(y)", bounds(low=0, low_open=True))


def reverse_sigmoid_probabilities(logits, beta, gamma):
    """The perturbed, renormalised probabilities y' of each row of `logits` (float32 or more)."""
    log_y = torch.log_softmax(logits.float(), dim=1)
    logit_y = log_y - torch.log(-torch.expm1(log_y))        # log y - log(1 - y), +-inf at 0 and 1
    perturbation = beta * (torch.sigmoid(gamma * logit_y) - 0.5)
    perturbed = (log_y.exp() - perturbation).clamp_min(0)
    # a row with every class at 0 cannot happen: a class with y <= 1/2 has perturbation <= 0
    return perturbed / perturbed.sum(dim=1, keepdim=True)


def reverse_sigmoid_log_probs(logits, beta, gamma):
    """log y': what the student reads as its teacher's logits (-inf where y' is 0)."""
    return reverse_sigmoid_probabilities(logits, beta, gamma).log().to(logits.dtype)


register_defence(Defence(
    name="reverse_sigmoid", summary="reverse sigmoid: the probabilities minus beta * (sigmoid("
                                    "gamma * logit) - 1/2), renormalised (an answer-time defence)",
    transform=lambda logits, params: reverse_sigmoid_log_probs(
        logits, params.reverse_sigmoid_beta, params.reverse_sigmoid_gamma),
    label=lambda params: (f"reverse sigmoid (beta {params.reverse_sigmoid_beta:g}, "
                          f"gamma {params.reverse_sigmoid_gamma:g})"),
    keys=(BETA, GAMMA), rank=35))
