"""SIGKILL a real training process at seeded random moments: checkpoints stay whole, resume is exact,
and the kills land in training (a run left with fewer epochs than it asked for, killed inside an
epoch), not only before the first checkpoint or after the last."""
import os
import random
import signal
import time

import pytest
import torch
from configs import TINY8, write_config
from conftest import ROOT
from forkrun import start

from utils.base.checkpoint import load_checkpoint
from utils.training.tracking import read_metrics

# three epochs with the learning rate dropped after the first: the resumed runs must match it exactly
PARAMS = {**TINY8, "schedule": [1], "num_epochs": 3}
KILLS = 4  # two anywhere, two inside epoch 2


def _start(folder, *extra):
    """train_scratch.py forked from a warm process: the kills land in the run, not in `import`."""
    return start(ROOT / "train_scratch.py", ["--save_path", str(folder), *extra])


def _check_whole(folder):
    """Every checkpoint present loads completely and is a finished epoch of this run; returns the
    epoch last_model.tar holds (0 without one)."""
    for name in ("last_model.tar", "best_model.tar"):
        if (folder / name).exists():
            checkpoint = load_checkpoint(folder / name)
            assert 1 <= checkpoint["epoch"] <= PARAMS["num_epochs"]
            assert checkpoint["state_dict"]["fc2.weight"].shape == (10, 32)
    last = folder / "last_model.tar"
    return load_checkpoint(last)["epoch"] if last.exists() else 0


def _wait_for(path, process, seconds=120):
    deadline = time.time() + seconds
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), "the run wrote no checkpoint"


@pytest.mark.slow
def test_each_kill_leaves_whole_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path):
    reference = write_config(tmp_path / "reference", PARAMS)
    started = time.time()
    assert _start(reference).wait(timeout=300) == 0
    duration = time.time() - started
    expected = load_checkpoint(reference / "last_model.tar")["state_dict"]
    expected_best = load_checkpoint(reference / "best_model.tar")["epoch"]
    epoch_seconds = min(r["seconds"] for r in read_metrics(reference / "metrics.jsonl"))

    rng = random.Random(20210507)
    landed = []  # per kill: (exit status, epoch last_model.tar held, metrics rows written)
    for kill in range(KILLS):
        run = write_config(tmp_path / f"killed{kill}", PARAMS)
        process = _start(run)
        if kill % 2:  # inside epoch 2: once epoch 1 is saved, a random part of an epoch later
            _wait_for(run / "last_model.tar", process)
            time.sleep(rng.uniform(0.05, 0.5) * epoch_seconds)
        else:  # anywhere: set-up, data, a batch, eval, a write...
            time.sleep(rng.uniform(0.35, 1.0) * duration)
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it finished first (its server reaps it at once); counted in `landed`
        process.wait(timeout=60)
        held = _check_whole(run)
        rows = len(read_metrics(run / "metrics.jsonl")) if (run / "metrics.jsonl").exists() else 0
        landed.append((process.returncode, held, rows))
        assert _start(run, "--resume", "auto").wait(timeout=300) == 0
        final = load_checkpoint(run / "last_model.tar")["state_dict"]
        assert all(torch.equal(expected[k], final[k]) for k in expected), f"kill {kill}"
        assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
        assert load_checkpoint(run / "best_model.tar")["epoch"] == expected_best
        assert not list(run.glob(".*.tmp"))
        # the second start continued the killed run's checkpoint when there was one
        assert ("- Resumed from" in (run / "training.log").read_text()) == (held > 0), f"kill {kill}"
    # the kills landed in training: the process was killed (not finished) with fewer epochs saved
    # than it asked for, and at least once inside an epoch (its metrics row not written yet)
    mid_training = [(rows, held) for status, held, rows in landed
                    if status == -signal.SIGKILL and 1 <= held < PARAMS["num_epochs"]]
    assert mid_training, landed
    assert any(rows == held for rows, held in mid_training), landed
