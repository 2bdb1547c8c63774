"""The two training objectives of the paper, as pure functions of tensors and floats.

    terms = kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.9)
    terms["loss"].backward()        # terms["ce"] and terms["kl"] are its parts, for the logs

Each returns a dict of named 0-d tensors, "loss" (what is minimised) first, then its parts, so the
engine can accumulate them on the device without a host sync per batch and log each by name.
"""
import torch.nn.functional as F

# The original adds 100 to the nasty total "to make the loss positive". A constant
# leaves every gradient unchanged; it is kept so logged totals compare with the
# original's training.log line for line.
NASTY_LOSS_OFFSET = 100.0


def ce_loss(logits, labels):
    """Plain cross-entropy training (normal teachers and baseline students)."""
    ce = F.cross_entropy(logits, labels)
    return {"loss": ce, "ce": ce}


def soft_kl(target_logits, logits, T):
    """T^2 * KL(softmax(target/T) || softmax(logits/T)), batch mean; the target is a constant.

    T^2 keeps the gradient scale independent of the temperature (Hinton et al.).
    """
    target = F.softmax(target_logits.detach() / T, dim=1)
    return F.kl_div(F.log_softmax(logits / T, dim=1), target, reduction="batchmean") * (T * T)


def kd_loss(student_logits, teacher_logits, labels, T, alpha):
    """alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)."""
    ce = F.cross_entropy(student_logits, labels)
    kl = soft_kl(teacher_logits, student_logits, T)
    return {"loss": alpha * kl + (1.0 - alpha) * ce, "ce": ce, "kl": kl}


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
