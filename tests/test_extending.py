"""README's "Extending" examples, applied to a copy of the project exactly as written, then used."""
import json
import re
import shutil
import subprocess
import sys

import torch

from conftest import ROOT

SECTION = re.compile(r"^## Extending.*?(?=^## )", re.S | re.M)
BLOCK = re.compile(r"```python\n# (\S+)( \(at its end\))?\n(.*?)```", re.S)


def readme_examples():
    """[(path, append?, code)] of the Extending section's python blocks."""
    section = SECTION.search((ROOT / "README.md").read_text()).group(0)
    return [(path, bool(at_end), code) for path, at_end, code in BLOCK.findall(section)]


def test_readme_shows_a_network_a_data_set_and_a_method():
    assert [path for path, _, _ in readme_examples()] == [
        "nets/tiny.py", "utils/data.py", "methods/label_smoothing.py"]


def test_the_examples_work_as_written(tmp_path):
    project = tmp_path / "project"
    for part in ("nets", "methods", "utils"):
        shutil.copytree(ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "train_scratch.py", project)
    for path, at_end, code in readme_examples():
        target = project / path
        assert at_end == target.exists()  # new files are new; the table entry goes into its file
        with open(target, "a") as f:
            f.write("\n\n" + code)
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text(json.dumps({
        "model_name": "tiny", "dataset": "digits5", "method": "label_smoothing", "smoothing": 0.2,
        "learning_rate": 0.01, "schedule": [999], "gamma": 0.1, "batch_size": 32, "num_epochs": 3,
        "num_workers": 0, "cuda": 0}))
    result = subprocess.run([sys.executable, "train_scratch.py", "--save_path", str(run)],
                            cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("train_")) for r in rows] == \
        [["train_acc", "train_ce", "train_loss"]] * 3
    assert rows[-1]["best_acc"] > 40.0  # 5 classes: chance is 20%
    checkpoint = torch.load(run / "best_model.tar", weights_only=True)
    assert checkpoint["state_dict"]["classifier.weight"].shape == (5, 32)
    assert "Optimizer: Adam" in (run / "training.log").read_text()
    probe = ("import torch, nets; m = nets.build_model('tiny', 5); "
             "logits, stages = nets.forward_features(m, torch.zeros(2, 3, 32, 32)); "
             "print(tuple(logits.shape), [tuple(s.shape) for s in stages])")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=project, capture_output=True,
                           text=True, timeout=120)
    assert shown.stdout.strip() == "(2, 5) [(2, 32, 8, 8)]", shown.stderr
