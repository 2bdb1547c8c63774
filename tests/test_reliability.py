"""Reliability: --resume auto, one run per folder, divergence, Ctrl-C and SIGTERM, refused runs
write nothing (not even the lock file)."""
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from configs import KD, TINY8, write_config
from conftest import ROOT
from forkrun import Command, run_scripts

import methods
import nets
import train_kd
import train_scratch
from methods.base import Objective
from methods.scratch import ce_loss
from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.base.errors import Diverged
from utils.base.lock import RunLock
from utils.training.engine import fit, prepare
from utils.training.tracking import read_metrics


def _snapshot(folder):
    """Every file of the folder, the lock file included: a refused run must not leave one."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _default_sigint():
    # a shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C
    # handler: the child gets the default, however the tests were started
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _training(run, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "train_scratch.py"), "--save_path", str(run),
                             *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)


def _wait_for(path, process, seconds=120):
    deadline = time.time() + seconds
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert path.exists(), "the run wrote no checkpoint"


def _script(name, *args, env=None):
    return run_scripts([Command(ROOT / name, args, env)])[0]


@pytest.mark.slow
def test_resume_auto_starts_fresh_then_continues(tmp_path):
    run = write_config(tmp_path / "run", TINY8)
    train_scratch.main(["--save_path", str(run), "--resume", "auto"])  # nothing to resume yet
    write_config(run, TINY8, num_epochs=2)
    train_scratch.main(["--save_path", str(run), "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert f"- Resumed from {run / 'last_model.tar'}" in (run / "training.log").read_text()


@pytest.mark.slow
def test_a_second_process_in_the_same_folder_is_refused(tmp_path):
    run = write_config(tmp_path / "run", TINY8)
    (run / "training.log").write_text("earlier run\n")
    with RunLock(run):
        result = _script("train_scratch.py", "--save_path", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {run}: another process (pid {os.getpid()}) is training "
                                     "in this folder; wait for it or stop it first")
    assert (run / "training.log").read_text() == "earlier run\n"
    assert not (run / "last_model.tar").exists()


def test_a_stale_lock_file_does_not_block(tmp_path):
    run = write_config(tmp_path / "run", TINY8)
    (run / ".lock").write_text("999999\n")  # left by a killed process: no flock is held
    train_scratch.main(["--save_path", str(run)])
    assert (run / "last_model.tar").exists()


def _args(run, resume=None):
    return SimpleNamespace(save_path=str(run), data_dir=None, device="cpu", gpu_id=None, resume=resume)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoints(tmp_path):
    run = write_config(tmp_path / "run", TINY8, num_epochs=2)
    first = prepare(_args(run), methods.TABLE, "scratch")
    fit(first)
    before = _snapshot(run)
    write_config(run, TINY8, num_epochs=3)
    broken = prepare(_args(run), methods.TABLE, "scratch")

    class NanAtThirdBatch(Objective):
        calls = 0

        def forward(self, model, images, labels, at):
            self.calls += 1
            logits = model(images)
            return logits, ce_loss(logits * (float("nan") if self.calls == 3 else 1.0), labels)
    with pytest.raises(Diverged, match=r"non-finite loss at epoch 3, batch 3 \(term loss, ce\); stopped"):
        fit(broken._replace(objective=NanAtThirdBatch()), resume=str(run / "last_model.tar"))
    after = _snapshot(run)
    for name in ("last_model.tar", "best_model.tar", "params.json"):
        assert name == "params.json" or after[name] == before[name]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_exploding_nasty_run_exits_1_with_one_line(tmp_path):
    teacher = write_config(tmp_path / "teacher", TINY8)
    train_scratch.main(["--save_path", str(teacher)])
    nasty = write_config(tmp_path / "nasty", TINY8, learning_rate=1e6, model_name="preresnet20",
                         adversarial_model="net", adversarial_resume=str(teacher / "best_model.tar"),
                         temperature=4, weight=50.0, batch_size=512)
    result = _script("train_nasty.py", "--save_path", str(nasty))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: non-finite loss at epoch 1, batch ")
    assert "try a lower learning_rate or weight" in result.stderr
    assert not (nasty / "last_model.tar").exists()


def _stop_after_an_epoch(run, signum, status, words):
    """Train `run` in a child, send `signum` once an epoch is saved; the epoch last_model.tar holds."""
    process = _training(run)
    _wait_for(run / "last_model.tar", process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    last = run / "last_model.tar"
    assert process.returncode == status and "Traceback" not in stderr
    assert stderr.strip().startswith(f"error: {words}; {last} holds epoch ")
    assert stderr.strip().endswith(f"--save_path {run} --resume {last} (or --resume auto)")
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert epoch >= 1 and f"holds epoch {epoch}:" in stderr
    return epoch


@pytest.mark.slow
def test_ctrl_c_stops_with_a_consistent_checkpoint_and_says_how_to_resume(tmp_path):
    run = write_config(tmp_path / "run", TINY8, num_epochs=200, batch_size=32)
    _stop_after_an_epoch(run, signal.SIGINT, 130, "interrupted")


def test_a_refused_kd_run_leaves_the_folder_untouched(tmp_path):
    run = write_config(tmp_path / "student", TINY8, **KD,
                       teacher_resume=str(tmp_path / "missing.tar"))
    (run / "training.log").write_text("an earlier run's log\n")
    before = _snapshot(run)
    with pytest.raises(Exception, match="does not exist"):
        train_kd.main(["--save_path", str(run)])
    assert _snapshot(run) == before


def test_save_path_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    import tempfile

    from utils.base.errors import ConfigError
    run = write_config(tmp_path / "run", TINY8)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # root ignores chmod: simulate
    with pytest.raises(ConfigError, match=r"--save_path .*run: cannot write there \(Permission denied\)"):
        train_scratch.main(["--save_path", str(run)])
    assert sorted(p.name for p in run.iterdir()) == ["params.json"]


@pytest.mark.slow
def test_save_path_that_is_not_a_folder_is_refused(tmp_path):
    result = _script("train_scratch.py", "--save_path", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --save_path {tmp_path / 'nowhere'}: no such folder " \
                                    "(it must hold params.json)"


def test_missing_checkpoints_are_reported_before_any_data_is_read(tmp_path, monkeypatch):
    import utils.training.engine
    from utils.base.errors import CheckpointError

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the teacher checkpoint was checked")
    monkeypatch.setattr(utils.training.engine, "build_loaders", no_data)
    run = write_config(tmp_path / "student", TINY8, **KD,
                       teacher_resume=str(tmp_path / "missing.tar"))
    with pytest.raises(CheckpointError, match="missing.tar does not exist"):
        train_kd.main(["--save_path", str(run)])
    write_config(tmp_path / "alone", TINY8)
    with pytest.raises(CheckpointError, match="nowhere.tar does not exist"):
        train_scratch.main(["--save_path", str(tmp_path / "alone"), "--resume", str(tmp_path / "nowhere.tar")])


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_with_status_143_and_the_run_resumes(tmp_path):
    run = write_config(tmp_path / "run", TINY8, num_epochs=200, batch_size=32)
    epoch = _stop_after_an_epoch(run, signal.SIGTERM, 143, "interrupted by SIGTERM")
    last = run / "last_model.tar"
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")][-1] >= epoch
    # the same command with --resume auto continues to the end (one epoch more, here)
    result = _script("train_scratch.py", "--save_path", str(run), "--resume", "auto",
                     "--set", f"num_epochs={epoch + 1}")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(last)["epoch"] == epoch + 1
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, epoch + 2))


@pytest.mark.slow
def test_a_stop_just_after_last_model_tar_was_written_names_that_epoch(tmp_path, monkeypatch):
    import utils.training.engine
    from utils.base.errors import Interrupted
    from utils.training.cli import Terminated
    run = write_config(tmp_path / "run", TINY8, num_epochs=3)
    real = utils.training.engine.save_checkpoint

    def save_then_stop(path, checkpoint):
        real(path, checkpoint)
        if path.name == "last_model.tar" and checkpoint["epoch"] == 2:
            raise Terminated()  # the signal came before the run counted the epoch as done
    monkeypatch.setattr(utils.training.engine, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted, match=f"interrupted by SIGTERM; .*last_model.tar holds epoch 2: "
                                          f"continue with --save_path {run}") as stopped:
        fit(prepare(_args(run), methods.TABLE, "scratch"))
    assert stopped.value.exit_code == 143


@pytest.mark.slow
def test_a_refused_resume_leaves_the_folder_as_it_was_lock_file_included(tmp_path):
    other = tmp_path / "mlp.tar"
    save_checkpoint(other, {"epoch": 1, "state_dict": nets.build_model("mlp", 10).state_dict()})
    fresh = write_config(tmp_path / "fresh", TINY8)  # no lock file yet: none may be left
    finished = write_config(tmp_path / "finished", TINY8)
    train_scratch.main(["--save_path", str(finished)])
    (finished / ".lock").write_text("12345\n")  # an earlier owner's pid: put back, not rewritten
    for run in (fresh, finished):
        before = _snapshot(run)
        result = _script("train_scratch.py", "--save_path", str(run), "--resume", str(other))
        assert result.returncode == 1 and "does not fit the model net" in result.stderr
        assert _snapshot(run) == before
    assert sorted(_snapshot(fresh)) == ["params.json"]


def test_the_lock_file_stays_once_the_run_writes_and_a_stale_one_never_blocks(tmp_path):
    from utils.base.errors import NastyError
    folder = tmp_path / "run"
    folder.mkdir()
    with RunLock(folder):
        assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(NastyError, match=f"another process \\(pid {os.getpid()}\\)"):
            RunLock(folder).__enter__()  # flock is per open file: refused within a process too
    assert not (folder / ".lock").exists()
    with RunLock(folder) as lock:
        lock.keep()
    assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
    (folder / ".lock").write_text("999999\n")  # a killed run's: no flock is held on it
    with RunLock(folder):  # taken over, its bytes put back after
        assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
    assert (folder / ".lock").read_text() == "999999\n"


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_the_same_step(tmp_path):
    """SLURM sends SIGTERM to every process of the job: launcher and ranks alike."""
    run = write_config(tmp_path / "run", TINY8, num_epochs=200, batch_size=100)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                "--nproc_per_node=2", str(ROOT / "train_scratch.py"), "--save_path",
                                str(run)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for(run / "last_model.tar", process)
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    last = run / "last_model.tar"
    epoch = load_checkpoint(last)["epoch"]
    for rank in (0, 1):  # each rank's line, none of them a traceback from a broken collective
        assert (f"error: rank {rank}: interrupted by SIGTERM; {last} holds epoch {epoch}: "
                f"continue with --save_path {run}") in output, output[-3000:]
    assert "Gloo" not in output and "Connection closed" not in output
    result = _script("train_scratch.py", "--save_path", str(run), "--resume", "auto",
                     "--set", f"num_epochs={epoch + 1}")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(last)["epoch"] == epoch + 1
