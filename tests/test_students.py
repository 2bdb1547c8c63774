"""The field's strongest students (DKD, FitNet, attention transfer) and the label-smoothing
reference against hand-computed values; their declarations (threat model, keys); the stage
pairing of feature distillation. Their runs: tests/test_attack_wiring.py."""
import math

import pytest
import torch
import torch.nn as nn
from configs import TINY, write_config
from conftest import ROOT

import nets
import train_kd
import train_scratch
from methods import load_params, params_from_dict
from methods.at import AttentionTransfer, at_loss, attention_map, same_size
from methods.base import Access, get_method
from methods.dkd import dkd_loss, warmup_factor
from methods.feature_kd import relative_stage, stage_pairs
from methods.fitnet import fitnet_loss, regressor
from methods.label_smoothing import smoothed_ce_loss
from methods.reverse import reverse_logits
from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.base.errors import ConfigError
from utils.training.step import Step
from utils.training.tracking import read_metrics

TEACHER = {"teacher_model": "preresnet20", "teacher_resume": "t.tar"}


def _softmax(values, T=1.0):
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _ce(logits, label):
    return -math.log(_softmax(logits)[label])


# ----------------------------------------------------------------------------- DKD

STUDENT_LOGITS = [[1.0, 2.0, 0.5, -0.5], [0.2, -1.0, 3.0, 0.0]]
TEACHER_LOGITS = [[2.0, 0.0, 1.0, 0.5], [1.0, 1.5, 1.0, -1.0]]
LABELS = [0, 2]


def _dkd_by_hand(student, teacher, labels, T):
    """TCKD and NCKD, summed over the rows and divided by their number, times T^2."""
    tckd = nckd = 0.0
    for s, t, y in zip(student, teacher, labels):
        ps, pt = _softmax(s, T), _softmax(t, T)
        tckd += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest = [i for i in range(len(s)) if i != y]
        nckd += _kl(_softmax([t[i] for i in rest], T), _softmax([s[i] for i in rest], T))
    return tckd * T * T / len(labels), nckd * T * T / len(labels)


def test_dkd_loss_by_hand():
    T, alpha, beta, warm, ce_weight = 2.0, 1.0, 8.0, 0.25, 0.5
    out = dkd_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS),
                   torch.tensor(LABELS), T, alpha, beta, warm, ce_weight)
    tckd, nckd = _dkd_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, T)
    ce = sum(_ce(s, y) for s, y in zip(STUDENT_LOGITS, LABELS)) / 2
    assert out["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert out["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss"].item() == pytest.approx(ce_weight * ce + warm * (alpha * tckd + beta * nckd),
                                               rel=1e-5)
    assert out["warmup"].item() == warm


def test_dkd_of_a_teacher_equal_to_the_student_is_zero_and_its_gradient_reaches_the_student():
    logits = torch.tensor(STUDENT_LOGITS, requires_grad=True)
    out = dkd_loss(logits, logits.detach().clone(), torch.tensor(LABELS), 4.0, 1.0, 8.0, 1.0, 0.0)
    assert out["tckd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["nckd"].item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor(TEACHER_LOGITS)
    dkd_loss(logits, teacher, torch.tensor(LABELS), 4.0, 1.0, 8.0, 1.0, 0.0)["loss"].backward()
    assert logits.grad.abs().sum() > 0


def test_dkd_of_a_teacher_that_keeps_only_the_target_has_no_non_target_term():
    # a sparse defence keeping one logit: the non-target classes are all -inf
    teacher = torch.tensor([[3.0, float("-inf"), float("-inf"), float("-inf")],
                            [float("-inf"), float("-inf"), 3.0, float("-inf")]])
    student = torch.tensor(STUDENT_LOGITS, requires_grad=True)
    out = dkd_loss(student, teacher, torch.tensor(LABELS), 4.0, 1.0, 8.0, 1.0, 1.0)
    assert out["nckd"].item() == 0.0 and torch.isfinite(out["loss"])
    p_target = [_softmax(s, 4.0)[y] for s, y in zip(STUDENT_LOGITS, LABELS)]
    tckd = sum(-math.log(p) for p in p_target) * 16 / 2  # KL([1, 0] || [p, 1 - p]) = -log p
    assert out["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()


def test_dkd_warmup_counts_epochs_from_one_like_mdistiller():
    assert [warmup_factor(epoch, 4) for epoch in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 20) == 1 / 20


def test_dkd_defaults_are_the_papers():
    params = params_from_dict({**TINY, **TEACHER, "method": "dkd", "temperature": 4})
    assert (params.dkd_alpha, params.dkd_beta, params.dkd_warmup, params.ce_weight) == (1.0, 8.0, 20, 1.0)
    assert params.teacher_output == "logits"  # a defence of the outputs applies to DKD


# ----------------------------------------------------------------------------- label smoothing

def test_label_smoothing_loss_by_hand():
    logits, label, eps = [1.0, 2.0, 0.5, -0.5], 0, 0.1
    log_p = [math.log(p) for p in _softmax(logits)]
    target = [eps / 4 + (1 - eps) * (i == label) for i in range(4)]
    smoothed = -sum(t * lp for t, lp in zip(target, log_p))
    out = smoothed_ce_loss(torch.tensor([logits]), torch.tensor([label]), eps)
    assert out["loss"].item() == pytest.approx(smoothed, rel=1e-6)
    assert out["ce"].item() == pytest.approx(_ce(logits, label), rel=1e-6)
    plain = smoothed_ce_loss(torch.tensor([logits]), torch.tensor([label]), 0.0)
    assert plain["loss"].item() == pytest.approx(_ce(logits, label), rel=1e-6)


def test_label_smoothing_is_the_reference_student_alone():
    params = params_from_dict({**TINY, "method": "label_smoothing"}, "scratch")
    method = params.method_entry
    assert params.label_smoothing == 0.1 and method.reference and method.frozen == ()
    assert method.table_label(params) == "label smoothing (0.1)"
    with pytest.raises(ConfigError, match="label_smoothing = 1.0 must be >= 0 and < 1"):
        params_from_dict({**TINY, "method": "label_smoothing", "label_smoothing": 1.0}, "scratch")


# ----------------------------------------------------------------------------- threat model

def test_each_strategy_declares_what_it_needs_of_the_teacher():
    access = {name: get_method(name).access for name in
              ("kd", "dkd", "hard_label", "skeptical", "deepinversion", "fitnet", "at")}
    assert access == {"kd": Access.OUTPUTS, "dkd": Access.OUTPUTS, "hard_label": Access.OUTPUTS,
                      "skeptical": Access.OUTPUTS, "deepinversion": Access.WEIGHTS,
                      "fitnet": Access.WEIGHTS, "at": Access.WEIGHTS}
    # a defence of the outputs applies to what a strategy reads of them, so not to features
    assert [n for n in access if not get_method(n).defended] == ["fitnet", "at"]


def test_a_feature_student_has_no_defence_key():
    # the original's files carry other methods' keys, which are ignored; this one would silently
    # mean "defended" where nothing is
    with pytest.raises(ConfigError, match="teacher_output = 'sparse' does not apply to method "
                                          "'fitnet': it reads the teacher's weights, not the outputs"):
        params_from_dict({**TINY, **TEACHER, "method": "fitnet", "teacher_output": "sparse"})
    assert params_from_dict({**TINY, **TEACHER, "method": "at", "teacher_output": "logits"})


# ----------------------------------------------------------------------------- stage pairs

def test_stages_are_paired_by_relative_depth():
    assert stage_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert stage_pairs(3, 4) == [(0, 0), (1, 2), (2, 3)]  # round(1 * 3 / 2) = 2
    assert stage_pairs(4, 3) == [(0, 0), (2, 1), (3, 2)]
    assert stage_pairs(7, 3) == [(0, 0), (3, 1), (6, 2)]
    assert stage_pairs(1, 4) == [(0, 3)]
    assert relative_stage(1, 3, 4) == 2 and relative_stage(1, 4, 3) == 1


# ----------------------------------------------------------------------------- FitNet

@pytest.mark.parametrize("student,teacher,layer,kernel", [
    ((16, 32, 32), (32, 32, 32), nn.Conv2d, (1, 1)),
    ((16, 32, 32), (32, 16, 16), nn.Conv2d, (3, 3)),
    ((16, 8, 8), (32, 16, 16), nn.ConvTranspose2d, (4, 4)),
    ((16, 10, 10), (32, 8, 8), nn.Conv2d, (3, 3)),
])
def test_the_regressor_is_repdistillers(student, teacher, layer, kernel):
    head = regressor(student, teacher)
    assert type(head[0]) is layer and head[0].kernel_size == kernel
    assert isinstance(head[1], nn.BatchNorm2d) and isinstance(head[2], nn.ReLU)
    assert tuple(head(torch.randn(2, *student)).shape[1:]) == teacher


def test_no_regressor_to_a_larger_map_that_is_not_twice_the_size():
    with pytest.raises(ConfigError, match="no regressor from the student's 8x8 hint map to the "
                                          "teacher's 12x12"):
        regressor((16, 8, 8), (32, 12, 12))


def test_fitnet_loss_by_hand():
    hint = torch.tensor([[[[1.0, 2.0]]]])
    target = torch.tensor([[[[0.0, 4.0]]]])
    logits, labels = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1])
    out = fitnet_loss(logits, hint, target, labels, weight=100.0, ce_weight=0.5)
    mse = (1.0 + 4.0) / 2
    assert out["hint"].item() == pytest.approx(mse)
    assert out["loss"].item() == pytest.approx(0.5 * _ce([1.0, 2.0, 0.5], 1) + 100 * mse, rel=1e-6)


# ----------------------------------------------------------------------------- attention transfer

def test_attention_map_by_hand():
    # one sample, two channels of 1 x 2: mean over channels of f^2 = [(1 + 9) / 2, (4 + 0) / 2]
    features = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])
    a = attention_map(features, 2.0)
    norm = math.hypot(5.0, 2.0)
    assert a[0].tolist() == pytest.approx([5.0 / norm, 2.0 / norm])


def test_the_larger_map_is_pooled_to_the_smaller():
    big, small = torch.arange(16.0).view(1, 1, 4, 4), torch.zeros(1, 3, 2, 2)
    pooled, kept = same_size(big, small)
    assert kept is small and pooled.tolist() == [[[[2.5, 4.5], [10.5, 12.5]]]]
    kept, pooled = same_size(small, big)
    assert kept is small and pooled.shape == (1, 1, 2, 2)


def test_at_loss_by_hand():
    student = [torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[2.0, 2.0]]]])]
    teacher = [torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[1.0, 1.0]]]])]
    logits, labels = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    out = at_loss(logits, student, teacher, labels, p=2.0, weight=1000.0, ce_weight=1.0)
    # pair 1: maps [1, 0] and [0, 1], squared difference mean (1 + 1) / 2; pair 2: equal maps
    assert out["attention"].item() == pytest.approx(1.0)
    assert out["loss"].item() == pytest.approx(_ce([0.0, 1.0], 0) + 1000.0, rel=1e-6)


def test_feature_students_refuse_a_network_without_maps():
    teacher = nets.build_model("preresnet20", 10, input_size=32).eval()
    values = {**TINY, **TEACHER, "method": "at", "model_name": "mlp"}
    del values["num_channels"]
    params = params_from_dict(values)
    with pytest.raises(ConfigError, match="method 'at' needs convolutional stage outputs"):
        AttentionTransfer(params, teacher)


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A 4-channel `net` trained one epoch on digits, and a random network of the same shape."""
    base = tmp_path_factory.mktemp("teachers")
    folder = write_config(base / "trained", batch_size=256, seed=1)
    train_scratch.main(["--save_path", str(folder)])
    torch.manual_seed(7)
    random = nets.build_model("net", 10, input_size=32, num_channels=4, dropout_rate=0.0)
    save_checkpoint(base / "random.tar", {"epoch": 0, "state_dict": random.state_dict()})
    return {"trained": folder / "best_model.tar", "random": base / "random.tar"}


def _run(folder, teacher, **values):
    write_config(folder, batch_size=256, teacher_model="net", teacher_resume=str(teacher), **values)
    train_kd.main(["--save_path", str(folder)])
    return read_metrics(folder / "metrics.jsonl"), load_checkpoint(folder / "last_model.tar")


STRATEGIES = {"dkd": {"temperature": 4, "dkd_warmup": 2, "num_epochs": 2},
              "fitnet": {"hint_stage": 1}, "at": {}}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(STRATEGIES))
def test_the_strategy_learns_from_its_teacher(tmp_path, teachers, method):
    """The same student run with the trained teacher and with a random one: other weights (a
    strategy that ignored its teacher would train the same network twice)."""
    runs = {name: _run(tmp_path / name, path, method=method, **STRATEGIES[method])
            for name, path in teachers.items()}
    (rows, checkpoint), (_, other) = runs["trained"], runs["random"]
    changed = [k for k in checkpoint["state_dict"]
               if not torch.equal(checkpoint["state_dict"][k], other["state_dict"][k])]
    assert changed, f"{method}: the teacher changed no weight of the student"
    plain = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0).state_dict()
    assert list(checkpoint["state_dict"]) == list(plain)  # the plain network: loads as a teacher
    terms = sorted(k for k in rows[-1] if k.startswith("train_") and k not in ("train_acc",))
    assert terms == {"dkd": ["train_ce", "train_loss", "train_nckd", "train_tckd", "train_warmup"],
                     "fitnet": ["train_ce", "train_hint", "train_loss"],
                     "at": ["train_attention", "train_ce", "train_loss"]}[method]
    if method == "dkd":  # the warm-up over 2 epochs, counted from 1
        assert [row["train_warmup"] for row in rows] == [0.5, 1.0]
        for row in rows:
            total = row["train_ce"] + row["train_warmup"] * (row["train_tckd"] + 8 * row["train_nckd"])
            assert row["train_loss"] == pytest.approx(total, rel=1e-4)
    if method == "fitnet":  # the regressor trains with the student and is saved apart from it
        regressor = checkpoint["objective_state_dict"]
        assert sorted(regressor) == ["regressor.0.bias", "regressor.0.weight", "regressor.1.bias",
                                     "regressor.1.num_batches_tracked", "regressor.1.running_mean",
                                     "regressor.1.running_var", "regressor.1.weight"]
        assert regressor["regressor.0.weight"].shape == (8, 8, 1, 1)  # bn2 -> bn2: 1x1
        assert regressor["regressor.1.num_batches_tracked"] == -(-1438 // 256)
        assert not torch.equal(regressor["regressor.0.weight"],
                               other["objective_state_dict"]["regressor.0.weight"])
        assert rows[-1]["train_loss"] == pytest.approx(rows[-1]["train_ce"] + 100 * rows[-1]["train_hint"],
                                                       rel=1e-4)
    if method == "at":  # no head of its own: nothing beside the network
        assert "objective_state_dict" not in checkpoint
        assert rows[-1]["train_loss"] == pytest.approx(
            rows[-1]["train_ce"] + 1000 * rows[-1]["train_attention"], rel=1e-4)


@pytest.mark.slow
def test_label_smoothing_trains_alone_with_smoothed_targets(tmp_path):
    folder = write_config(tmp_path / "run", batch_size=256, method="label_smoothing")
    train_scratch.main(["--save_path", str(folder)])
    row = read_metrics(folder / "metrics.jsonl")[-1]
    assert row["train_loss"] == row["train_smoothed_ce"] > row["train_ce"]  # smoothing costs fits
    assert "label_smoothing:0.1" in (folder / "training.log").read_text()


def test_the_cifar100_configs_pair_their_networks():
    """Every CIFAR-100 config of these students builds its objective against a ResNet-18 teacher
    (random weights) and trains a step: the stages the hint and attention maps pair fit."""
    teacher = nets.build_model("resnet18", 100, input_size=32).eval()
    folders = sorted(p.parent for group in ("dkd_normal", "fitnet_normal", "at_normal")
                     for p in (ROOT / "experiments" / "CIFAR100").glob(f"{group}_resnet18/*/params.json"))
    assert len(folders) == 6
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    for folder in folders:
        params = load_params(folder)
        student = nets.build_model(params.model_name, 100, input_size=32)
        objective = params.method_entry.build(params, {"teacher": teacher})
        _, terms = objective(student, images, labels, Step(0, 0, 1))
        terms["loss"].backward()
        assert torch.isfinite(terms["loss"]), folder


def test_dkd_reads_the_teachers_logits_through_the_runs_defence():
    torch.manual_seed(0)
    teacher = nets.build_model("net", 10, input_size=32, num_channels=4, dropout_rate=0.0).eval()
    student = nets.build_model("net", 10, input_size=32, num_channels=4, dropout_rate=0.0).eval()
    params = params_from_dict({**TINY, "method": "dkd", "teacher_model": "net", "teacher_resume": "t.tar",
                               "temperature": 4, "dkd_warmup": 4, "teacher_output": "reverse"})
    objective = params.method_entry.build(params, {"teacher": teacher})
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6)
    _, terms = objective(student, images, labels, Step(epoch=1, step=0, steps=1))
    with torch.no_grad():
        expected = dkd_loss(student(images), reverse_logits(teacher(images)), labels, 4.0, 1.0, 8.0,
                            0.5, 1.0)  # epoch 1 (0-based) of a 4-epoch warm-up: 2 / 4
        raw = dkd_loss(student(images), teacher(images), labels, 4.0, 1.0, 8.0, 0.5, 1.0)
    for name in ("loss", "tckd", "nckd", "warmup"):
        assert terms[name].item() == pytest.approx(expected[name].item(), rel=1e-5), name
    assert terms["nckd"].item() != pytest.approx(raw["nckd"].item(), rel=1e-3)  # the defence acted
