"""Self-undermining training (the paper's nasty teacher), run by train_nasty.py.

CE - weight * T^2 * KL(nasty || adversarial) + 100 against a frozen normal network.
"""
from utils.losses import nasty_loss
from utils.schema import FLOAT, MODEL, REQUIRED, STR, Key, bounds

from .base import DEFENDED_TEACHER, TEMPERATURE, AgainstFrozen, Frozen, Method, register


def build(params, frozen):
    return AgainstFrozen("adversarial", frozen["adversarial"], nasty_loss,
                         T=params.temperature, weight=params.weight)


register(Method(
    name="nasty", script="nasty", role=DEFENDED_TEACHER, build=build,
    summary="nasty teacher: accurate, with soft outputs pushed away from a normal network's",
    keys=(TEMPERATURE,
          Key("adversarial_model", MODEL, REQUIRED, "the normal network the nasty teacher is "
              "pushed away from"),
          Key("adversarial_resume", STR, REQUIRED, "checkpoint of the adversarial network"),
          Key("weight", FLOAT, REQUIRED, "weight of the KL term that makes the teacher nasty",
              bounds(low=0))),
    frozen=(Frozen("adversarial", "adversarial_model", "adversarial_resume"),),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train teacher loss"),
               ("kl", "Train adversarial loss")),
    implied_by="adversarial_resume", diverged_hint=" or weight"))
