"""kd_loss and nasty_loss against values computed by hand with the math module."""
import math

import pytest
import torch
import torch.nn.functional as F

from methods.kd import kd_loss, soft_kl
from methods.nasty import NASTY_LOSS_OFFSET, nasty_loss


def _softmax(values, T):
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# one sample, two classes: teacher [ln 3, 0] (p = 3/4, 1/4 at T=1), student uniform
TEACHER = torch.tensor([[math.log(3.0), 0.0]])
STUDENT = torch.tensor([[0.0, 0.0]])
LABEL = torch.tensor([0])


def test_kd_loss_by_hand_at_T1():
    # KL(3/4,1/4 || 1/2,1/2) = 3/4 ln(3/2) + 1/4 ln(1/2); CE(uniform, label 0) = ln 2
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    terms = kd_loss(STUDENT, TEACHER, LABEL, T=1.0, alpha=0.9)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.9 * kl + 0.1 * math.log(2.0), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.187046, abs=1e-6)


def test_kd_loss_by_hand_at_T2_scales_by_T_squared():
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]  # softmax([ln3/2, 0])
    kl = 4.0 * _kl(p, [0.5, 0.5])
    terms = kd_loss(STUDENT, TEACHER, LABEL, T=2.0, alpha=0.5)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)  # float32
    assert terms["kl"].item() == pytest.approx(0.145363, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(0.5 * kl + 0.5 * math.log(2.0), rel=1e-6)


def test_kd_loss_is_a_batch_mean():
    s = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]])
    t = torch.tensor([[0.2, 0.1, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([2, 1])
    T = 4.0
    kls = [T * T * _kl(_softmax(t[i].tolist(), T), _softmax(s[i].tolist(), T)) for i in range(2)]
    ces = [-math.log(_softmax(s[i].tolist(), 1.0)[labels[i]]) for i in range(2)]
    terms = kd_loss(s, t, labels, T=T, alpha=0.9)
    assert terms["kl"].item() == pytest.approx(sum(kls) / 2, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(sum(ces) / 2, rel=1e-6)


def test_nasty_loss_by_hand():
    # trained network = TEACHER row, adversarial = uniform; KL(trained || adversarial)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    ce = -math.log(0.75)
    terms = nasty_loss(TEACHER, STUDENT, LABEL, T=1.0, weight=0.04)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(ce - 0.04 * kl + 100.0, rel=1e-7)


def test_nasty_kl_direction_is_trained_network_first():
    logits, adversarial = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    T = 4.0
    expected = T * T * _kl(_softmax(logits[0].tolist(), T), _softmax(adversarial[0].tolist(), T))
    reverse = T * T * _kl(_softmax(adversarial[0].tolist(), T), _softmax(logits[0].tolist(), T))
    kl = nasty_loss(logits, adversarial, torch.tensor([0]), T=T, weight=1.0)["kl"].item()
    assert kl == pytest.approx(expected, rel=1e-5) and kl != pytest.approx(reverse, rel=1e-3)


def test_alpha_zero_is_plain_cross_entropy():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    total = kd_loss(s, t, labels, T=4.0, alpha=0.0)["loss"]
    torch.testing.assert_close(total, F.cross_entropy(s, labels))


def test_weight_zero_is_cross_entropy_plus_the_logging_offset():
    s, a = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    total = nasty_loss(s, a, labels, T=4.0, weight=0.0)["loss"]
    torch.testing.assert_close(total, F.cross_entropy(s, labels) + NASTY_LOSS_OFFSET)


def test_identical_logits_give_zero_kl():
    # float32 rounding of log-softmax, times T^2 = 16: zero up to 1e-5 for any logits (unseeded
    # before, so the draw depended on which tests ran earlier in the process, and 1e-6 was too tight)
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert soft_kl(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(logits, logits.clone(), torch.zeros(5, dtype=torch.long), 4.0, 0.9)["kl"].abs() < 1e-5
    assert nasty_loss(logits, logits.clone(), torch.zeros(5, dtype=torch.long), 4.0, 0.1)["kl"].abs() < 1e-5


def test_no_gradient_reaches_teacher_or_adversarial_logits():
    s = torch.randn(4, 6, requires_grad=True)
    other = torch.randn(4, 6, requires_grad=True)
    labels = torch.randint(0, 6, (4,))
    kd_loss(s, other, labels, 4.0, 0.9)["loss"].backward()
    assert other.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    s.grad = None
    nasty_loss(s, other, labels, 4.0, 0.04)["loss"].backward()
    assert other.grad is None and s.grad.abs().sum() > 0


def test_nasty_gradient_pushes_away_from_the_adversary():
    # with CE switched off (weight large), a gradient step must increase the KL
    logits = torch.tensor([[1.0, 0.5, 0.0]], requires_grad=True)
    adversarial = torch.tensor([[1.0, 0.4, 0.1]])
    labels = torch.tensor([0])
    before = nasty_loss(logits, adversarial, labels, T=4.0, weight=100.0)
    before["loss"].backward()
    with torch.no_grad():
        stepped = logits - 0.01 * logits.grad
    after = nasty_loss(stepped, adversarial, labels, T=4.0, weight=100.0)
    assert after["kl"].item() > before["kl"].item()
