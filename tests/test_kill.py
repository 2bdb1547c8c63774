"""SIGKILL a real training process at seeded random moments: checkpoints stay whole, resume is exact."""
import random
import signal
import subprocess
import sys
import time

import torch

from configs import TINY8, write_config
from conftest import ROOT
from utils.checkpoint import load_checkpoint
from utils.tracking import read_metrics

# three epochs with the learning rate dropped after the first: the resumed runs must match it exactly
PARAMS = {**TINY8, "schedule": [1], "num_epochs": 3}
KILLS = 5


def _start(folder, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "train_scratch.py"), "--save_path", str(folder),
                             *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _check_whole(folder):
    """Every checkpoint present loads completely and is a finished epoch of this run."""
    for name in ("last_model.tar", "best_model.tar"):
        if (folder / name).exists():
            checkpoint = load_checkpoint(folder / name)
            assert 1 <= checkpoint["epoch"] <= PARAMS["num_epochs"]
            assert checkpoint["state_dict"]["fc2.weight"].shape == (10, 32)


def test_each_kill_leaves_whole_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path):
    reference = write_config(tmp_path / "reference", PARAMS)
    started = time.time()
    assert _start(reference).wait(timeout=300) == 0
    duration = time.time() - started
    expected = load_checkpoint(reference / "last_model.tar")["state_dict"]
    expected_best = load_checkpoint(reference / "best_model.tar")["epoch"]

    rng = random.Random(20210507)
    for kill in range(KILLS):
        run = write_config(tmp_path / f"killed{kill}", PARAMS)
        process = _start(run)
        time.sleep(rng.uniform(0.35, 1.0) * duration)  # import, data, a batch, eval, a write...
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        _check_whole(run)
        assert _start(run, "--resume", "auto").wait(timeout=300) == 0
        final = load_checkpoint(run / "last_model.tar")["state_dict"]
        assert all(torch.equal(expected[k], final[k]) for k in expected), f"kill {kill}"
        assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
        assert load_checkpoint(run / "best_model.tar")["epoch"] == expected_best
        assert not list(run.glob(".*.tmp"))
