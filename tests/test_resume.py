"""Bitwise resume on the CPU: a run trained N epochs straight and the same run stopped after N - k
epochs and continued with --resume end identical (weights, optimizer state, the objective's own
heads, the fp16 loss scaler, the best accuracy on record, every metrics row but its time) for the
SGD networks with momentum, the nasty, kd and skeptical methods, and fp16 training.

Each case also checks that what must carry over is really there at the resume point (momentum
buffers, the heads' optimizer state, a loss scaler that a fresh one would not equal), so a resume
that dropped it would differ from the straight run, not happen to match it.
"""
import pytest
import torch
from configs import KD, NASTY, TINY, write_config

import nets
import train_kd
import train_nasty
import train_scratch
from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.data.fixtures import make_cifar
from utils.training.tracking import read_metrics

SCRIPTS = {"scratch": train_scratch, "nasty": train_nasty, "kd": train_kd}
# generated CIFAR-10 files, 40 training images in batches of 16 (3 SGD steps an epoch, the last of
# 8), 10 test images: resnet18 trains an epoch in seconds on one core
CIFAR_TRAIN, CIFAR_TEST = 40, 10
CIFAR = {**TINY, "dataset": "cifar10", "batch_size": 16, "learning_rate": 0.05}


def _same(a, b, where):
    """Assert two checkpoint parts are equal, tensors bit for bit (dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _rows(folder):
    """The metrics rows without their wall time."""
    rows = read_metrics(folder / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _straight_and_resumed(tmp_path, script, config, epochs, after, *flags):
    """Train `config` `epochs` epochs straight, and `after` epochs then --resume to `epochs`;
    returns (straight checkpoint, checkpoint at the resume point, resumed checkpoint)."""
    main = SCRIPTS[script].main
    straight = write_config(tmp_path / "straight", config, num_epochs=epochs)
    main(["--save_path", str(straight), *flags])
    resumed = write_config(tmp_path / "resumed", config, num_epochs=epochs)
    main(["--save_path", str(resumed), "--set", f"num_epochs={after}", *flags])
    middle = load_checkpoint(resumed / "last_model.tar")
    assert middle["epoch"] == after
    main(["--save_path", str(resumed), "--resume", str(resumed / "last_model.tar"), *flags])
    a, b = load_checkpoint(straight / "last_model.tar"), load_checkpoint(resumed / "last_model.tar")
    assert f"- Resumed from {resumed / 'last_model.tar'}: continuing after epoch {after}" in \
        (resumed / "training.log").read_text()
    assert a["epoch"] == b["epoch"] == epochs
    for part in ("state_dict", "optim_dict", "objective_state_dict", "scaler", "best_acc", "best_epoch"):
        assert (part in a) == (part in b), part
        if part in a:
            _same(a[part], b[part], part)
    rows = _rows(straight)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert _rows(resumed) == rows
    best = load_checkpoint(straight / "best_model.tar"), load_checkpoint(resumed / "best_model.tar")
    _same(best[0]["state_dict"], best[1]["state_dict"], "best_model.tar")
    return a, middle, b


@pytest.mark.slow
def test_resume_keeps_the_best_accuracy_on_record(tmp_path):
    """A run whose test accuracy rises every epoch ends the same whether a resume forgot the best
    accuracy on record or not; here the checkpoint's best (100 %, epoch 1) cannot be beaten."""
    folder = write_config(tmp_path / "run", num_epochs=2)
    train_scratch.main(["--save_path", str(folder), "--set", "num_epochs=1"])
    last, best = folder / "last_model.tar", folder / "best_model.tar"
    checkpoint = load_checkpoint(last)
    save_checkpoint(last, {**checkpoint, "best_acc": 100.0, "best_epoch": 1})
    before = best.read_bytes()
    train_scratch.main(["--save_path", str(folder), "--resume", str(last)])
    row = read_metrics(folder / "metrics.jsonl")[-1]
    assert (row["epoch"], row["new_best"], row["best_acc"], row["best_epoch"]) == (2, False, 100.0, 1)
    assert load_checkpoint(last)["best_acc"] == 100.0 and best.read_bytes() == before


# ----------------------------------------------------------------------------- SGD with momentum

@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_cifar(root, "cifar10", n_train=CIFAR_TRAIN, n_test=CIFAR_TEST)
    return root


# the preresnet and resnet families, each by its smallest network (the registry trains them with
# SGD, momentum 0.9, weight decay 5e-4, as the original)
@pytest.mark.slow
@pytest.mark.parametrize("model", ["preresnet20", "resnet18"])
def test_sgd_with_momentum_resumes_bitwise(tmp_path, cifar_dir, model):
    assert nets.optimizer_of(model) == "sgd"
    config = {**CIFAR, "model_name": model, "num_channels": None, "dropout_rate": None,
              "schedule": [1], "gamma": 0.5}
    config = {k: v for k, v in config.items() if v is not None}
    straight, middle, _ = _straight_and_resumed(tmp_path, "scratch", config, 2, 1,
                                                "--data_dir", str(cifar_dir))
    group = middle["optim_dict"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 5e-4)
    parameters = sum(1 for _ in nets.build_model(model, 10).parameters())
    state = middle["optim_dict"]["state"]
    # every parameter has its momentum buffer at the resume point: a fresh optimizer would not
    assert len(state) == parameters and all(s["momentum_buffer"].abs().sum() > 0 for s in state.values())
    assert straight["optim_dict"]["param_groups"][0]["lr"] == pytest.approx(0.025)  # the schedule


# ----------------------------------------------------------------------------- the methods

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-channel `net` trained one epoch: the teacher and the adversary of the runs below."""
    folder = write_config(tmp_path_factory.mktemp("teacher") / "teacher")
    train_scratch.main(["--save_path", str(folder)])
    return str(folder / "best_model.tar")


@pytest.mark.slow
def test_nasty_run_resumes_bitwise(tmp_path, teacher):
    config = {**TINY, **NASTY, "adversarial_resume": teacher}
    _, middle, _ = _straight_and_resumed(tmp_path, "nasty", config, 2, 1)
    assert middle["method"] == "nasty" and middle["optim_dict"]["state"]  # Adam's moments


@pytest.mark.slow
def test_kd_run_resumes_bitwise(tmp_path, teacher):
    config = {**TINY, **KD, "teacher_resume": teacher, "teacher_output": "sparse", "sparse_ratio": 0.5}
    _, middle, _ = _straight_and_resumed(tmp_path, "kd", config, 2, 1)
    assert middle["method"] == "kd" and middle["optim_dict"]["state"]


@pytest.mark.slow
def test_skeptical_run_resumes_bitwise_with_its_heads(tmp_path, teacher):
    # kd_delay 0: cross-entropy alone in epoch 1, the teacher in epochs 2 and 3; resumed after 2,
    # when the heads have trained (their weights, batch-norm statistics and Adam moments)
    config = {**TINY, **KD, "method": "skeptical", "teacher_resume": teacher, "loc": 1,
              "kd_delay": 0}
    straight, middle, _ = _straight_and_resumed(tmp_path, "kd", config, 3, 2)
    heads = middle["objective_state_dict"]
    assert heads and all(k.startswith("heads.") for k in heads)
    assert not any(k.startswith("heads") for k in middle["state_dict"])
    network = sum(1 for _ in nets.build_model("net", 10, num_channels=4, dropout_rate=0.0).parameters())
    head_moments = [s for i, s in middle["optim_dict"]["state"].items() if i >= network]
    assert head_moments and all(s["exp_avg"].abs().sum() > 0 for s in head_moments)
    # and the heads kept training after the resume point (the comparison covers a changed state)
    assert not torch.equal(heads["heads.1.fc.weight"], straight["objective_state_dict"]["heads.1.fc.weight"])


@pytest.mark.slow
def test_fitnet_run_resumes_bitwise_with_its_regressor(tmp_path, teacher):
    config = {**TINY, "method": "fitnet", "teacher_model": "net", "teacher_resume": teacher}
    straight, middle, _ = _straight_and_resumed(tmp_path, "kd", config, 2, 1)
    regressor = middle["objective_state_dict"]
    assert regressor and all(k.startswith("regressor.") for k in regressor)
    assert not torch.equal(regressor["regressor.0.weight"],
                           straight["objective_state_dict"]["regressor.0.weight"])


@pytest.mark.slow
def test_dkd_run_resumes_bitwise_inside_its_warm_up(tmp_path, teacher):
    # warm-up over 3 epochs, resumed after the first: the factor is a function of the epoch
    config = {**TINY, "method": "dkd", "teacher_model": "net", "teacher_resume": teacher,
              "temperature": 4, "dkd_warmup": 3}
    _straight_and_resumed(tmp_path, "kd", config, 2, 1)
    assert [r["train_warmup"] for r in _rows(tmp_path / "resumed")] == [pytest.approx(1 / 3),
                                                                        pytest.approx(2 / 3)]


FP16 = {**TINY, "amp": "fp16", "batch_size": 64}
FP16_STEPS = -(-1438 // 64)  # optimizer steps an epoch on the digits training split


@pytest.mark.slow
def test_fp16_run_resumes_bitwise_with_its_loss_scaler(tmp_path):
    straight, middle, resumed = _straight_and_resumed(tmp_path, "scratch", FP16, 2, 1)
    assert straight["scaler"] == resumed["scaler"]
    # no step overflowed (the tracker counts every step since the start), so a scaler that was not
    # restored (tracker 0) would have ended at FP16_STEPS, not here
    assert middle["scaler"]["_growth_tracker"] == FP16_STEPS
    assert straight["scaler"]["_growth_tracker"] == 2 * FP16_STEPS


@pytest.mark.slow
def test_fp16_resume_continues_from_the_checkpoints_loss_scale(tmp_path):
    """A checkpoint whose scaler had backed off (scale 2^10, 5 steps since the last overflow): the
    resumed epoch starts from that scale and that count, not from a fresh scaler's 2^16 and 0."""
    folder = write_config(tmp_path / "run", FP16, num_epochs=2)
    train_scratch.main(["--save_path", str(folder), "--set", "num_epochs=1"])
    last = folder / "last_model.tar"
    checkpoint = load_checkpoint(last)
    checkpoint["scaler"] = {**checkpoint["scaler"], "scale": 1024.0, "_growth_tracker": 5}
    save_checkpoint(last, checkpoint)
    train_scratch.main(["--save_path", str(folder), "--resume", str(last)])
    # growth needs 2000 steps without an overflow, and a lower scale overflows no more often
    assert load_checkpoint(last)["scaler"] == {**checkpoint["scaler"], "_growth_tracker": 5 + FP16_STEPS}
