"""The losses of every method, and the teacher defences, as pure functions of tensors and floats.

    terms = kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.9)
    terms["loss"].backward()        # terms["ce"] and terms["kl"] are its parts, for the logs

Each returns a dict of named 0-d tensors, "loss" (what is minimised) first, then its parts, so the
engine can accumulate them on the device without a host sync per batch and log each by name.
"""
import torch
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


# ----------------------------------------------------------------------------- teacher defences
# Applied to a frozen normal teacher's logits before the student sees them (Ma et al., ICLR 2022
# workshop, "Sparse Logits Suffice to Fail Knowledge Distillation"). Both keep the argmax, so the
# teacher's accuracy is unchanged.

TEACHER_OUTPUTS = ("logits", "sparse", "reverse")


def sparse_keep(num_classes, sparse_ratio):
    """How many logits a stingy teacher keeps: int(ratio * classes), as the authors compute it."""
    return int(sparse_ratio * num_classes)


def sparse_logits(logits, keep):
    """The `keep` largest logits of each row; every other one is -inf (probability 0 at any T)."""
    values, index = logits.topk(keep, dim=1)
    return torch.full_like(logits, float("-inf")).scatter(1, index, values)


def reverse_logits(logits):
    """The largest logit stays; the others swap ranks: the 2nd most likely class gets the smallest
    value, the 3rd the second smallest, ... (the authors' reverse teacher)."""
    values, index = logits.sort(dim=1, descending=True)
    reordered = torch.cat([values[:, :1], values[:, 1:].flip(1)], dim=1)
    return torch.empty_like(logits).scatter(1, index, reordered)


def defended_logits(logits, teacher_output, sparse_ratio=1.0):
    """The teacher's logits as a defence hands them out: as they are, sparse or reversed."""
    if teacher_output == "sparse":
        return sparse_logits(logits, sparse_keep(logits.shape[1], sparse_ratio))
    if teacher_output == "reverse":
        return reverse_logits(logits)
    return logits


# ----------------------------------------------------------------------------- student strategies

def hard_label_loss(student_logits, teacher_logits, labels):
    """CE with the teacher's argmax as the label (a student that ignores the soft outputs); the
    CE with the true labels is reported, not trained on."""
    hard = F.cross_entropy(student_logits, teacher_logits.argmax(1))
    return {"loss": hard, "hard": hard, "ce": F.cross_entropy(student_logits.detach(), labels)}


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
