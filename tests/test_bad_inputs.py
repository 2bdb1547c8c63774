"""A catalogue of bad inputs fed to the real scripts: one clear line, the right exit code, nothing touched.

Exit 2: usage and configuration errors; exit 1: runtime errors (checkpoints, data, divergence).
"""
import os
from pathlib import Path

import configs
import pytest
import torch
from configs import TINY8, write_config
from conftest import ROOT
from forkrun import Command, run_scripts

import nets
from utils.base.checkpoint import save_checkpoint
from utils.data.fixtures import make_cifar

GOOD = TINY8  # 8 channels, as the teacher checkpoints built below
KD = {**GOOD, **configs.KD}


def _checkpoint(path, name, num_classes, **options):
    model = nets.build_model(name, num_classes, **options)
    save_checkpoint(path, {"epoch": 1, "state_dict": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    make_cifar(root / "cifar", "cifar10", 40, 20)
    corrupt = root / "corrupt"
    make_cifar(corrupt, "cifar10", 40, 20)
    (corrupt / "data-cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    (root / "empty.tar").write_bytes(b"")
    torch.save({"epoch": 1, "state_dict": {}, "note": _Payload(str(root / "pwned"))}, root / "evil.tar")
    (root / "a_directory.tar").mkdir()
    return {"root": root, "cifar": root / "cifar", "corrupt": corrupt,
            "teacher": _checkpoint(root / "teacher.tar", "net", 10, num_channels=8, dropout_rate=0.0),
            "mlp": _checkpoint(root / "mlp.tar", "mlp", 10),
            "teacher100": _checkpoint(root / "t100.tar", "net", 100, num_channels=8, dropout_rate=0.0)}


class _Payload:
    """Unpickling this runs a shell command that creates a file: it must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _params(**changes):
    values = {**GOOD, **changes}
    return {k: v for k, v in values.items() if v is not None}


# (id, script, params (dict, raw text or None for no file), extra args, exit code, expected text)
def _cases(f):
    kd = lambda teacher, **more: {**KD, "teacher_resume": str(teacher), **more}  # noqa: E731
    return [
        ("missing --save_path", "train_scratch.py", _params(), ["--no-save-path"], 2, "--save_path"),
        ("no params.json", "train_scratch.py", None, [], 2, "params.json"),
        ("malformed JSON", "train_scratch.py", '{"model_name": "net",\n "x" 1}', [], 2,
         "invalid JSON at line 2, column 6"),
        ("unknown key", "train_scratch.py", _params(learing_rate=0.1), [], 2,
         "unknown key 'learing_rate' (did you mean 'learning_rate'?)"),
        ("missing required key", "train_kd.py",
         {k: v for k, v in kd(f["teacher"]).items() if k != "alpha"}, [], 2,
         "missing key 'alpha'"),
        ("wrong type", "train_scratch.py", _params(batch_size="128"), [], 2, "batch_size"),
        ("negative learning rate", "train_scratch.py", _params(learning_rate=-0.1), [], 2,
         "learning_rate"),
        ("alpha outside [0, 1]", "train_kd.py", kd(f["teacher"], alpha=1.5), [], 2, "alpha"),
        ("unsorted schedule", "train_scratch.py", _params(schedule=[120, 80]), [], 2, "schedule"),
        ("unknown model", "train_scratch.py", _params(model_name="resnet19"), [], 2,
         "unknown model_name 'resnet19' (did you mean 'resnet18'?)"),
        ("unknown dataset", "train_scratch.py", _params(dataset="cifar11"), [], 2, "cifar11"),
        ("64x64 data with a 32x32 network", "train_scratch.py",
         _params(model_name="preresnet20", dataset="tiny_imagenet"), [], 2, "64x64"),
        ("teacher checkpoint missing", "train_kd.py", kd(f["root"] / "nowhere.tar"), [], 1,
         "nowhere.tar does not exist"),
        ("teacher of another architecture", "train_kd.py", kd(f["mlp"]), [], 1,
         "does not fit the teacher net"),
        ("teacher with another class count", "train_kd.py", kd(f["teacher100"]), [], 1,
         "fc2.weight [100, 32] vs [10, 32]"),
        # refused after the run took the folder lock: the lock file must go too
        ("resume of another architecture", "train_scratch.py", _params(), ["--resume", str(f["mlp"])],
         1, "does not fit the model net with 10 classes"),
        ("empty file as checkpoint", "train_kd.py", kd(f["root"] / "empty.tar"), [], 1,
         "is empty (0 bytes)"),
        ("checkpoint that would run code", "train_kd.py", kd(f["root"] / "evil.tar"), [], 1,
         "refused: it holds objects other than tensors and plain data"),
        ("directory as checkpoint", "train_kd.py", kd(f["root"] / "a_directory.tar"), [], 1,
         "is a directory, not a file"),
        ("data folder missing, no network", "train_scratch.py", _params(dataset="cifar10"),
         ["--data_dir", str(f["root"] / "no_data")], 1, "CIFAR-10 not found: expected"),
        ("corrupt CIFAR pickle", "train_scratch.py", _params(dataset="cifar10"),
         ["--data_dir", str(f["corrupt"])], 1, "data_batch_3 is unreadable"),
        ("GPU that does not exist", "train_scratch.py", _params(), ["--gpu_id", "7"], 2,
         "--gpu_id" if torch.cuda.is_available() else "no usable CUDA device"),
        ("CUDA requested without CUDA", "train_scratch.py", _params(), ["--device", "cuda"], 2,
         "no usable CUDA device"),
        ("batch larger than the data set", "train_scratch.py",
         _params(dataset="cifar10", batch_size=64), ["--data_dir", str(f["cifar"])], 2,
         "batch_size 64 is larger than the cifar10 training split (40 images)"),
        ("last batch of one image", "train_scratch.py", _params(batch_size=479), [], 2,
         "leaves a last training batch of 1 image"),
        ("unknown flag", "train_scratch.py", _params(), ["--learning_rate", "0.1"], 2,
         "unrecognized arguments: --learning_rate 0.1"),
        ("output defence for a white-box student", "train_kd.py",
         {**GOOD, "method": "at", "teacher_model": "net", "teacher_resume": str(f["teacher"]),
          "teacher_output": "sparse"}, [], 2,
         "teacher_output = 'sparse' does not apply to method 'at': it reads the teacher's weights"),
        ("feature student of a teacher without maps", "train_kd.py",
         {**GOOD, "method": "fitnet", "teacher_model": "mlp", "teacher_resume": str(f["mlp"])}, [], 2,
         "method 'fitnet' needs convolutional stage outputs (C x H x W); the teacher 'mlp' has [(512,)"),
    ]


CASE_IDS = [case[0] for case in _cases({k: Path("x") for k in ("root", "teacher", "mlp", "teacher100",
                                                                "cifar", "corrupt")})]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, files):
    """Every case run by its real script, each in a process of its own (tests/forkrun.py):
    [(the process's result, its run folder, the folder's files before)]."""
    # a dead proxy: the CIFAR download fails at once, on any machine
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    base, commands, folders = tmp_path_factory.mktemp("cases"), [], []
    for index, (name, script, params, extra, code, text) in enumerate(_cases(files)):
        run = base / str(index) / "run"
        run.mkdir(parents=True)
        if isinstance(params, dict):
            write_config(run, params)
        elif isinstance(params, str):
            (run / "params.json").write_text(params)
        (run / "training.log").write_text("an earlier run\n")
        before = {p.name: p.read_bytes() for p in run.iterdir()}  # a lock file left behind would show
        args = [] if extra[:1] == ["--no-save-path"] else ["--save_path", str(run)]
        commands.append(Command(ROOT / script, [*args, *[a for a in extra if a != "--no-save-path"]],
                                env=env))
        folders.append((run, before))
    done = run_scripts(commands, base / "output")
    return [(result, run, before) for result, (run, before) in zip(done, folders)]


@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_bad_input_gives_one_line_and_touches_nothing(outcomes, files, index):
    name, script, params, extra, code, text = _cases(files)[index]
    if name == "CUDA requested without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result, run, before = outcomes[index]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert text in lines[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not (files["root"] / "pwned").exists()


def test_the_catalogue_has_at_least_twenty_distinct_cases():
    assert len(set(CASE_IDS)) >= 20
