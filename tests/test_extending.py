"""docs/extending.md's examples, added to a copy of the project exactly as written (new files only),
then used: a tree of the new network on the new data set, whose student is of the new method and
reads its teacher through the new defence, trained by reproduce.py into a table that shows both."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

BLOCK = re.compile(r"```python\n# (\S+)\n(.*?)```", re.S)
PARTS = ("nets", "methods", "utils", "repro")
SCRIPTS = ("train_scratch.py", "train_kd.py", "train_nasty.py", "reproduce.py")
TINY = {"model_name": "tiny", "dataset": "digits5", "learning_rate": 0.01, "schedule": [999],
        "gamma": 0.1, "batch_size": 32, "num_epochs": 3, "num_workers": 0, "cuda": 0}


def doc_examples():
    """[(path, code)] of the python blocks of docs/extending.md."""
    return BLOCK.findall((ROOT / "docs" / "extending.md").read_text())


def test_the_doc_shows_a_network_a_data_set_a_method_and_a_defence():
    assert [path for path, _ in doc_examples()] == [
        "nets/tiny.py", "utils/data/digits5.py", "methods/smooth_kd.py", "methods/top_k.py"]


def copy_with_examples(project):
    for part in PARTS:
        shutil.copytree(ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    for script in SCRIPTS:
        shutil.copy(ROOT / script, project)
    for path, code in doc_examples():
        target = project / path
        assert not target.exists()  # each piece is a new file: no file of the project changes
        target.write_text(code)


def write_tree(tree):
    configs = {"teacher": TINY,
               "alone": TINY,
               "student": {**TINY, "method": "smooth_kd", "smoothing": 0.2, "temperature": 4,
                           "teacher_model": "tiny", "teacher_resume": "tree/teacher/best_model.tar",
                           "teacher_output": "top_k", "top_k": 2}}
    for name, config in configs.items():
        (tree / name).mkdir(parents=True)
        (tree / name / "params.json").write_text(json.dumps(config))


@pytest.mark.slow
def test_the_examples_work_as_written(tmp_path):
    project = tmp_path / "project"
    copy_with_examples(project)
    write_tree(project / "tree")
    result = subprocess.run([sys.executable, "reproduce.py", "tree"], cwd=project,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in
            (project / "tree/student/metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("train_")) for r in rows] == \
        [["train_acc", "train_ce", "train_kl", "train_loss"]] * 3
    teacher = [json.loads(line) for line in
               (project / "tree/teacher/metrics.jsonl").read_text().splitlines()]
    assert teacher[-1]["best_acc"] > 40.0  # 5 classes: chance is 20%
    checkpoint = torch.load(project / "tree/teacher/best_model.tar", weights_only=True)
    assert checkpoint["state_dict"]["classifier.weight"].shape == (5, 32)
    assert "Optimizer: Adam" in (project / "tree/teacher/training.log").read_text()
    table = (project / "tree/results.md").read_text()
    # the new defence's row and the new method's column, labelled as they declare
    assert "| Teacher defence | Teacher accuracy | alone | smooth kd (0.2) [outputs] |" in table
    # the row's teacher as its students measured it through the defence, which keeps the top class
    assert re.search(r"^\| top-2 \| [0-9.]+ \(\+0\.00\); top class kept on 100\.0% \| [0-9.]+ \| "
                     r"[0-9.]+ \([+-][0-9.]+\) \|$", table, re.M)
    for part in ("repro",):  # the tables needed no edit
        for path in (ROOT / part).rglob("*.py"):
            assert (project / path.relative_to(ROOT)).read_bytes() == path.read_bytes()


def test_the_network_shows_its_stages(tmp_path):
    project = tmp_path / "project"
    copy_with_examples(project)
    probe = ("import torch, nets; m = nets.build_model('tiny', 5); "
             "logits, stages = nets.forward_features(m, torch.zeros(2, 3, 32, 32)); "
             "print(tuple(logits.shape), [tuple(s.shape) for s in stages])")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=project, capture_output=True,
                           text=True, timeout=120)
    assert shown.stdout.strip() == "(2, 5) [(2, 32, 8, 8)]", shown.stderr
