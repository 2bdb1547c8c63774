"""Self-undermining training (the paper's nasty teacher), run by train_nasty.py.

CE - weight * T^2 * KL(nasty || adversarial) + 100 against a frozen normal network.
"""
import torch.nn.functional as F

from utils.base.schema import FLOAT, MODEL, REQUIRED, STR, Key, bounds

from .base import TEMPERATURE, AgainstFrozen, Frozen, Method, Role, register

# The original adds 100 to the nasty total "to make the loss positive". A constant
# leaves every gradient unchanged; it is kept so logged totals compare with the
# original's training.log line for line.
NASTY_LOSS_OFFSET = 100.0


def nasty_loss(logits, adversarial_logits, labels, T, weight):
    """CE(logits, labels) - weight * T^2 * KL(softmax(logits/T) || softmax(adversarial/T)) + 100.

    Self-undermining training: stay accurate while moving the soft outputs as far as
    possible from what the frozen adversarial (normal) network predicts. Note the KL
    direction: the trained network's distribution is the *target* side, so the gradient
    flows through it there; the adversarial logits are constants.
    """
    ce = F.cross_entropy(logits, labels)
    target = F.softmax(logits / T, dim=1)
    kl = F.kl_div(F.log_softmax(adversarial_logits.detach() / T, dim=1), target,
                  reduction="batchmean") * (T * T)
    return {"loss": ce - weight * kl + NASTY_LOSS_OFFSET, "ce": ce, "kl": kl}


def build(params, frozen):
    return AgainstFrozen("adversarial", frozen["adversarial"], nasty_loss,
                         T=params.temperature, weight=params.weight)


# shared with the Safe Distillation Box (methods/sdb.py), which is nasty to unkeyed queries
ADVERSARIAL_KEYS = (
    Key("adversarial_model", MODEL, REQUIRED, "the normal network the nasty teacher is "
        "pushed away from"),
    Key("adversarial_resume", STR, REQUIRED, "checkpoint of the adversarial network"))
WEIGHT = Key("weight", FLOAT, REQUIRED, "weight of the KL term that makes the teacher nasty",
             bounds(low=0))
ADVERSARIAL_NETWORK = Frozen("adversarial", "adversarial_model", "adversarial_resume")

register(Method(
    name="nasty", script="nasty", role=Role.DEFENDED_TEACHER, build=build,
    summary="nasty teacher: accurate, with soft outputs pushed away from a normal network's",
    keys=(TEMPERATURE, *ADVERSARIAL_KEYS, WEIGHT),
    frozen=(ADVERSARIAL_NETWORK,),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train teacher loss"),
               ("kl", "Train adversarial loss")),
    implied_by="adversarial_resume", diverged_hint=" or weight", rank=10,
    temperature=lambda params: params.temperature))
