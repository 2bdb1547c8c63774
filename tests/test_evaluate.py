"""evaluate.py: a trained run's numbers, the metrics on hand-made tensors, the comparison of two
checkpoints, and its errors (one line, exit 2 or 1, no traceback)."""
import json
import subprocess
import sys

import pytest
import torch
from configs import write_config
from conftest import ROOT

import evaluate
import nets
import train_scratch
from utils.base.checkpoint import save_checkpoint
from utils.training.cli import run_script
from utils.training.evaluation import classification_metrics, compare_outputs
from utils.training.tracking import read_metrics

NET = ["--model", "net", "--dataset", "digits", "--set", "num_channels=4", "--set", "dropout_rate=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of the tiny `net` (4 channels) on digits."""
    folder = write_config(tmp_path_factory.mktemp("evaluate") / "run")
    train_scratch.main(["--save_path", str(folder), "--device", "cpu"])
    return folder


def _evaluate(capsys, *args):
    evaluate.main([*args, "--device", "cpu", "--json"])
    return json.loads(capsys.readouterr().out)


def test_a_runs_numbers_are_those_of_its_metrics(run, capsys):
    result = _evaluate(capsys, "--save_path", str(run))
    row = read_metrics(run / "metrics.jsonl")[-1]
    assert result["images"] == 359 and result["model"] == "net" and result["dataset"] == "digits"
    assert result["top1"] == row["test_acc"]
    assert result["loss"] == pytest.approx(row["test_loss"], rel=1e-6)
    assert "top5" not in result  # 10 classes
    assert result["checkpoint"] == str(run / "best_model.tar")


def test_per_class_accuracies_average_to_the_top1(run, capsys):
    result = _evaluate(capsys, "--save_path", str(run))
    per_class = result["per_class"]
    assert [row["class"] for row in per_class] == list(range(10))
    assert sum(row["images"] for row in per_class) == result["images"]
    weighted = sum(row["top1"] * row["images"] for row in per_class) / result["images"]
    assert weighted == pytest.approx(result["top1"], abs=1e-9)


def test_checkpoint_model_and_dataset_give_the_same_numbers(run, capsys):
    by_run = _evaluate(capsys, "--save_path", str(run), "--checkpoint", str(run / "last_model.tar"))
    by_name = _evaluate(capsys, "--checkpoint", str(run / "best_model.tar"), *NET)
    for key in ("images", "top1", "loss", "per_class"):
        assert by_run[key] == by_name[key]


def test_top5_and_per_class_on_a_hundred_classes_by_hand():
    logits = torch.zeros(4, 100)
    labels = torch.tensor([3, 7, 7, 50])
    logits[0, 3] = 9.0                                    # class 3 first: top-1 and top-5
    logits[1, [0, 1, 2, 4]] = torch.tensor([9., 8, 7, 6])
    logits[1, 7] = 5.0                                    # 5th: top-5 only
    logits[2, [0, 1, 2, 4, 5]] = torch.tensor([9., 8, 7, 6, 5.5])
    logits[2, 7] = 5.0                                    # 6th: neither
    logits[3, 50] = 1.0                                   # first (others 0): top-1
    metrics = classification_metrics(logits, labels, 100)
    assert metrics["images"] == 4 and metrics["top1"] == 50.0 and metrics["top5"] == 75.0
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)
    by_class = {row["class"]: row for row in metrics["per_class"]}
    assert by_class[3] == {"class": 3, "images": 1, "top1": 100.0}
    assert by_class[7] == {"class": 7, "images": 2, "top1": 0.0}
    assert by_class[50]["top1"] == 100.0 and by_class[0] == {"class": 0, "images": 0, "top1": None}
    assert "top5" not in classification_metrics(logits[:, :10], labels % 10, 10)


def test_compare_outputs_by_hand():
    first = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    second = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    kl, agreement, _, _ = compare_outputs(first, second, temperature=2.0)
    p = torch.softmax(first / 2, 1)
    q = torch.softmax(second / 2, 1)
    assert torch.allclose(kl, (p * (p / q).log()).sum(1))
    assert agreement == 50.0  # image 0: 0 vs 1; image 1: 0 vs 0


def test_a_checkpoint_against_itself_has_kl_0_and_agrees_everywhere(run, capsys):
    result = _evaluate(capsys, "--save_path", str(run), "--against", str(run / "best_model.tar"))
    against = result["against"]
    assert against["mean_kl"] == 0.0 and against["agreement"] == 100.0
    assert against["temperature"] == 4.0 and against["top1"] == result["top1"]
    named = _evaluate(capsys, "--checkpoint", str(run / "best_model.tar"), *NET, "--against",
                      str(run / "last_model.tar"), "--against_model", "net", "--temperature", "2")
    assert named["against"]["mean_kl"] == 0.0 and named["against"]["temperature"] == 2.0


@pytest.mark.slow
def test_the_text_report_from_the_command_line(run):
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--save_path", str(run),
                             "--device", "cpu", "--against", str(run / "best_model.tar")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    top1 = read_metrics(run / "metrics.jsonl")[-1]["test_acc"]
    out = result.stdout
    assert f"top-1         {top1:.3f} %" in out and "test images   359" in out
    assert "per class     class, top-1 % (images)" in out and "(36)" in out
    assert "KL(first || second) at T = 4: 0.0000" in out and "argmax agrees on 100.00 %" in out


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.tar"
    save_checkpoint(path, {"epoch": 1, "state_dict": nets.build_model("mlp", 10).state_dict()})
    return path


def _cases(run, mlp):
    best = str(run / "best_model.tar")
    return [
        (["--save_path", str(run), "--checkpoint", str(run / "nowhere.tar")], 1,
         f"error: checkpoint {run / 'nowhere.tar'} does not exist"),
        (["--checkpoint", str(mlp), *NET], 1, f"error: checkpoint {mlp} does not fit the network net"),
        (["--save_path", str(run), "--against", str(mlp)], 1, "does not fit the --against network net"),
        (["--checkpoint", best, "--model", "resnet19", "--dataset", "digits"], 2,
         "unknown model_name 'resnet19' (did you mean 'resnet18'?)"),
        (["--save_path", str(run), *NET], 2, "error: --save_path and --model and --dataset both given"),
        (["--checkpoint", best, "--model", "net"], 2, "(missing: --dataset NAME)"),
        (["--save_path", str(run), "--against_model", "net"], 2, "--against PATH, which is not given"),
        (["--save_path", str(run), "--against", best, "--temperature", "0"], 2,
         "--temperature 0: must be a number > 0"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_errors_are_one_line_with_an_exit_status(run, mlp_checkpoint, capsys, index):
    argv, code, text = _cases(run, mlp_checkpoint)[index]
    with pytest.raises(SystemExit) as stopped:
        run_script(evaluate.main, [*argv, "--device", "cpu"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert stopped.value.code == code and captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


@pytest.mark.slow
def test_an_error_from_the_command_line_has_no_traceback(run):
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--checkpoint",
                             str(run / "best_model.tar"), "--model", "resnet19", "--dataset", "digits"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
