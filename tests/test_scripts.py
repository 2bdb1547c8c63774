"""End to end: the three scripts on generated CIFAR-10 files and on digits, resume, teacher errors."""
import subprocess
import sys

import pytest
import torch
from configs import KD, NASTY, TINY8, write_config
from conftest import ROOT
from forkrun import Command, run_scripts

import nets
import train_kd
import train_nasty
import train_scratch
from methods import load_params
from utils.base.checkpoint import load_checkpoint
from utils.data.fixtures import make_cifar
from utils.data.loader import build_loaders
from utils.training.evaluation import evaluate
from utils.training.tracking import read_metrics

# batches of 64: several steps on the 160 generated CIFAR-10 images
CIFAR = {**TINY8, "batch_size": 64, "dataset": "cifar10"}
# three epochs with the learning rate dropped after the first: resume must land on both
DIGITS = {**TINY8, "batch_size": 64, "num_epochs": 3, "schedule": [1]}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_cifar(root, "cifar10", n_train=160, n_test=60)
    return root


@pytest.fixture(scope="module")
def cifar_chain(tmp_path_factory, cifar_dir):
    """teacher -> nasty teacher -> student distilled from it, one epoch each on CIFAR-10 files."""
    root = tmp_path_factory.mktemp("chain")
    teacher = write_config(root / "teacher", CIFAR)
    train_scratch.main(["--save_path", str(teacher), "--data_dir", str(cifar_dir)])
    nasty = write_config(root / "nasty", CIFAR, **NASTY, adversarial_resume=str(teacher / "best_model.tar"))
    train_nasty.main(["--save_path", str(nasty), "--data_dir", str(cifar_dir)])
    student = write_config(root / "student", CIFAR, **KD, teacher_resume=str(nasty / "best_model.tar"))
    train_kd.main(["--save_path", str(student), "--data_dir", str(cifar_dir)])
    return {"teacher": teacher, "nasty": nasty, "student": student, "data": cifar_dir}


@pytest.mark.parametrize("stage", ["teacher", "nasty", "student"])
def test_every_stage_writes_its_files(cifar_chain, stage):
    folder = cifar_chain[stage]
    names = {p.name for p in folder.iterdir()}
    assert {"params.json", "training.log", "metrics.jsonl", "best_model.tar", "last_model.tar"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] and rows[0]["lr"] == pytest.approx(1e-3)


def test_logs_carry_the_original_lines(cifar_chain):
    teacher = (cifar_chain["teacher"] / "training.log").read_text()
    for line in ("model_name:net", "Epoch 1/1", "Learning Rate 0.001", "- Train loss : ",
                 "- Eval metrics : acc: ", "- New best model", "- So far best epoch: 1, best acc: ",
                 "Optimizer: Adam"):
        assert line in teacher
    nasty = (cifar_chain["nasty"] / "training.log").read_text()
    assert "- Train teacher loss : " in nasty and "- Train adversarial loss : " in nasty
    assert "Create adversarial model --- net; load trained weights from " in nasty
    student = (cifar_chain["student"] / "training.log").read_text()
    assert "- Teacher Model Eval metrics : acc: " in student


def test_nasty_log_keeps_the_plus_100_total(cifar_chain):
    row = read_metrics(cifar_chain["nasty"] / "metrics.jsonl")[0]
    assert row["train_loss"] == pytest.approx(row["train_ce"] - 0.04 * row["train_kl"] + 100, rel=1e-5)


@pytest.mark.parametrize("stage", ["teacher", "nasty", "student"])
def test_best_checkpoint_gives_the_logged_accuracy(cifar_chain, stage):
    folder = cifar_chain[stage]
    mode = {"teacher": "scratch", "nasty": "nasty", "student": "kd"}[stage]
    params = load_params(folder, mode, {"data_dir": str(cifar_chain["data"])})
    model = nets.build_model("net", 10, num_channels=8, dropout_rate=0.0)
    checkpoint = load_checkpoint(folder / "best_model.tar")
    model.load_state_dict(checkpoint["state_dict"])
    _, test_loader = build_loaders(params, torch.device("cpu"))
    logged = read_metrics(folder / "metrics.jsonl")[0]["test_acc"]
    assert evaluate(model, test_loader)["acc"] == pytest.approx(logged, abs=1e-9)
    assert checkpoint["epoch"] == 1 and checkpoint["best_acc"] == pytest.approx(logged)


def test_student_logs_its_teachers_accuracy(cifar_chain):
    nasty_acc = read_metrics(cifar_chain["nasty"] / "metrics.jsonl")[0]["test_acc"]
    assert f"- Teacher Model Eval metrics : acc: {nasty_acc:05.3f}" in \
        (cifar_chain["student"] / "training.log").read_text()


@pytest.mark.slow
def test_resume_continues_at_the_right_epoch_and_matches_an_uninterrupted_run(tmp_path):
    whole = write_config(tmp_path / "whole", DIGITS)
    train_scratch.main(["--save_path", str(whole)])
    part = write_config(tmp_path / "part", DIGITS, num_epochs=1)
    train_scratch.main(["--save_path", str(part)])
    write_config(tmp_path / "part", DIGITS, num_epochs=3)  # same run, now allowed to finish
    train_scratch.main(["--save_path", str(part), "--resume", str(part / "last_model.tar")])

    a, b = (load_checkpoint(d / "last_model.tar")["state_dict"] for d in (whole, part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_metrics(part / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == [r["lr"] for r in read_metrics(whole / "metrics.jsonl")]
    log = (part / "training.log").read_text()
    resumed = log.split("- Resumed from")[1]
    assert "Epoch 2/3" in resumed and "Epoch 1/3" not in resumed and "Learning Rate 0.0001" in resumed


@pytest.mark.slow
def test_resume_from_an_original_checkpoint_uses_a_fresh_optimizer(tmp_path):
    first = write_config(tmp_path / "first", DIGITS, num_epochs=1)
    train_scratch.main(["--save_path", str(first)])
    ours = load_checkpoint(first / "last_model.tar")
    original = tmp_path / "original.tar"
    torch.save({k: ours[k] for k in ("epoch", "state_dict", "optim_dict")}, original)
    second = write_config(tmp_path / "second", DIGITS, num_epochs=2)
    train_scratch.main(["--save_path", str(second), "--resume", str(original)])
    assert "(original format): weights only; continuing after epoch 1 with a fresh optimizer" in \
        (second / "training.log").read_text()
    assert [r["epoch"] for r in read_metrics(second / "metrics.jsonl")] == [2]


def test_teacher_resume_flag_overrides_params(tmp_path, cifar_chain):
    student = write_config(tmp_path / "student", CIFAR, **KD, teacher_resume="does/not/exist.tar")
    train_kd.main(["--save_path", str(student), "--data_dir", str(cifar_chain["data"]),
                   "--teacher_resume", str(cifar_chain["teacher"] / "best_model.tar")])
    assert str(cifar_chain["teacher"] / "best_model.tar") in (student / "training.log").read_text()


def _script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / name), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_missing_teacher_checkpoint_is_one_line_and_exit_1(tmp_path, cifar_chain):
    student = write_config(tmp_path / "student", CIFAR, **KD, teacher_resume=str(tmp_path / "missing.tar"))
    result = _script("train_kd.py", "--save_path", str(student), "--data_dir", str(cifar_chain["data"]))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'missing.tar'} does not exist"


@pytest.mark.slow
def test_teacher_of_another_architecture_is_refused(tmp_path, cifar_chain):
    student = write_config(tmp_path / "student", CIFAR, **{**KD, "teacher_model": "mlp"},
                           teacher_resume=str(cifar_chain["teacher"] / "best_model.tar"))
    result = _script("train_kd.py", "--save_path", str(student), "--data_dir", str(cifar_chain["data"]))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "does not fit the teacher mlp with 10 classes: 2 missing keys (fc3.weight, fc3.bias); " \
           "26 unexpected keys (conv1.weight, conv1.bias, bn1.weight, ...)" in result.stderr
    assert not (student / "best_model.tar").exists()


def test_help_fits_one_screen(tmp_path):
    names = ("train_scratch.py", "train_nasty.py", "train_kd.py")
    for result in run_scripts([Command(ROOT / name, ["--help"]) for name in names], tmp_path):
        assert result.returncode == 0 and "--save_path" in result.stdout and "--resume" in result.stdout
        assert len(result.stdout.splitlines()) <= 40
