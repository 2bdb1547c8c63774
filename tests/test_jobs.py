"""reproduce.py --jobs N / --threads / --gpus: stages in parallel, as soon as their checkpoints exist,
with the same numbers whatever N is, and no training left behind when reproduce.py is stopped.

Fake runners check the scheduling; real runs check the numbers and the signals.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from configs import FakeRunner, paper_tree, quiet, write_config
from conftest import ROOT

import reproduce
from repro.pipeline import make_plan
from repro.progress import Progress
from repro.runner import Outcome, SubprocessRunner, execute, gpu_groups
from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError


class TimedRunner(FakeRunner):
    """A FakeRunner whose runs take a little while, recording when each started and ended."""

    def __init__(self, accuracy, fail=(), seconds=0.05, jobs=1):
        super().__init__(accuracy, fail, jobs)
        self.seconds, self.spans, self.lock = seconds, {}, threading.Lock()

    def __call__(self, run, status, progress):
        started = time.monotonic()
        time.sleep(self.seconds)
        with self.lock:
            outcome = super().__call__(run, status, progress)
            self.spans[run.key] = (started, time.monotonic())
        return outcome


def most_at_once(spans):
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level, top = 0, 0
    for _, step in edges:
        level += step
        top = max(top, level)
    return top


def test_jobs_run_independent_stages_together_and_never_before_their_parent(tmp_path):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    plan = make_plan(tree, seeds=[0, 1, 2])
    runner = TimedRunner(lambda r: 90.0 + r.seed, jobs=3)
    outcomes = execute(plan, runner, quiet())
    assert len(runner.spans) == 15 and {o.state for o in outcomes.values()} == {"ran"}
    assert most_at_once(runner.spans.values()) == 3
    for run in plan.runs:
        if run.parent_run is not None:  # started only after the checkpoint it reads was written
            assert runner.spans[run.key][0] >= runner.spans[run.parent_run.key][1]


def test_one_job_keeps_the_plan_order(tmp_path):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    plan = make_plan(tree, seeds=[0, 1])
    runner = FakeRunner(lambda r: 90.0)
    execute(plan, runner, quiet())
    assert [c[:2] for c in runner.calls] == [(r.stage.name, r.seed) for r in plan.runs]


def test_a_failure_with_jobs_skips_only_its_dependents(tmp_path):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    plan = make_plan(tree, seeds=[0, 1])
    outcomes = execute(plan, TimedRunner(lambda r: 90.0, fail={"b_nasty/teacher"}, jobs=2), quiet())
    states = {key: o.state for key, o in outcomes.items()}
    for seed in (0, 1):
        assert states[("b_nasty/teacher", seed)] == "failed"
        assert states[("a_kd_nasty/student", seed)] == "skipped"
        assert {states[(s, seed)] for s in ("z_base/teacher", "z_base/student",
                                            "a_kd_normal/student")} == {"ran"}
    assert outcomes[("a_kd_nasty/student", 1)].message == "needs b_nasty/teacher [seed 1], which failed"


def test_the_live_line_shows_every_running_stage(monkeypatch):
    import io
    monkeypatch.setenv("COLUMNS", "200")  # the line is cut to the terminal's width

    def fake_run(label):
        method = type("M", (), {"name": "scratch"})
        stage = type("S", (), {"method": method, "params": type("P", (), {"model_name": "net"})})
        return type("R", (), {"label": label, "key": (label, None), "folder": ROOT, "stage": stage})

    stream = io.StringIO()
    progress = Progress(stream=stream, live=True)
    progress.begin(4)
    a, b = fake_run("base/teacher"), fake_run("base/student")
    status = type("St", (), {"state": "new", "epoch": 0, "num_epochs": 15})
    progress.start(1, a, status)
    progress.start(2, b, status)
    progress.output(a, "Epoch 3/15\n")
    progress.output(b, "Epoch 1/15\n")
    progress.output(a, "- Eval metrics : acc: 97.214 ; loss: 0.100\n")
    assert stream.getvalue().endswith("\r\x1b[K[0:00:00] 2 running: base/teacher epoch 3/15 acc 97.21 "
                                      "| base/student epoch 1/15")
    progress.end(2, b, Outcome("skipped", message="why"))
    assert "[2/4 0:00:00] base/student (scratch, net): skipped: why\n" in stream.getvalue()
    progress.output(a, "Epoch 4/15\n")  # one stage left: the one-stage live line again
    assert stream.getvalue().endswith("\r\x1b[K[1/4 0:00:00] base/teacher (scratch, net): epoch 4/15, "
                                      "test acc 97.21")


def test_each_slot_gets_its_gpus_and_every_child_the_same_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # the machine's own numbering
    assert gpu_groups([0, 1, 2, 3], 1) == [[0], [1], [2], [3]]
    assert gpu_groups([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3]]
    runner = SubprocessRunner(tmp_path, gpus=[0, 1], jobs=4, threads=3)
    envs = [runner.environment(slot) for slot in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]  # 2 stages per GPU
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"3"} and {e["MKL_NUM_THREADS"] for e in envs} == {"3"}
    cpu = SubprocessRunner(tmp_path, jobs=2).environment(1)
    assert cpu["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in cpu or \
        cpu["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("argv, count, message", [
    (["--jobs", "0"], 0, "--jobs 0: give 1 or more"),
    (["--threads", "0"], 0, "--threads 0: give 1 or more"),
    (["--nproc", "2", "--jobs", "2"], 0, "--nproc 2 with --jobs 2 needs --gpus"),
    (["--gpus", "0,1"], 0, "--gpus: this machine has no CUDA GPU"),
    (["--gpus", "0,3"], 2, "this machine has 2 CUDA GPU\\(s\\) \\(0 to 1\\), so GPU 3 does not exist"),
    (["--gpus", "0", "--nproc", "2"], 1, "--nproc 2 needs at least 2 GPUs in --gpus, which names 1"),
    (["--gpus", "0", "--device", "cpu"], 1, "--gpus with --device cpu"),
])
def test_parallel_flags_that_cannot_work_are_refused_in_one_line(argv, count, message):
    args = reproduce.parse(["tree", *argv])
    with pytest.raises(ConfigError, match=message):
        reproduce.check_parallel(args, cuda_count=count)


@pytest.mark.parametrize("argv, count, forked", [
    (["--device", "cpu"], 2, True),          # CPU stages even on a GPU machine
    ([], 0, True),                           # no GPU: the stages train on the CPU
    ([], 1, False),                          # a CUDA context does not survive a fork
    (["--gpus", "0"], 1, False),
    (["--device", "cpu", "--nproc", "2"], 0, False),  # torchrun starts its own ranks
    (["--device", "cpu", "--no-fork"], 0, False),
])
def test_stages_are_forked_only_on_the_cpu_one_process_each(argv, count, forked, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    args = reproduce.parse(["tree", *argv])
    reproduce.check_parallel(args, cuda_count=count)
    assert args.fork is forked


@pytest.mark.parametrize("text", ["0,x", "0,0", "-1"])
def test_a_malformed_gpu_list_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as stop:
        reproduce.parse(["tree", "--gpus", text])
    assert stop.value.code == 2 and "--gpus" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs

def small_chain(tree):
    """Two independent stages of 1 epoch (their scheduling is tested with fake runs above)."""
    write_config(tree / "teacher")
    write_config(tree / "alone", num_channels=8)
    return tree


@pytest.mark.slow
def test_a_stage_gives_the_same_weights_whatever_the_number_of_jobs(tmp_path):
    one, two = small_chain(tmp_path / "one"), small_chain(tmp_path / "two")
    # fresh processes one at a time, and stages forked from a warm process two at a time
    reproduce.main([str(one), "--device", "cpu", "--no-figures", "--jobs", "1", "--no-fork"])
    reproduce.main([str(two), "--device", "cpu", "--no-figures", "--jobs", "2"])
    assert "(forked)" not in (one / "teacher" / "reproduce.log").read_text()
    assert "(forked)" in (two / "teacher" / "reproduce.log").read_text()
    for stage in ("teacher", "alone"):
        a = load_checkpoint(one / stage / "last_model.tar")["state_dict"]
        b = load_checkpoint(two / stage / "last_model.tar")["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), stage
        row = json.loads((two / stage / "reproduce.jsonl").read_text().splitlines()[-1])
        assert row["threads"] == "1"


def alive(pid):
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tree_processes(tree, driver=None):
    """Pids of the live training children of `tree` (reproduce.log names each stage's pid: a
    forked child's command line is its fork server's), and of `driver`'s children (the server)."""
    pids = {int(line.split()[2]) for log in tree.rglob("reproduce.log")
            for line in log.read_text().splitlines() if line.startswith("==== pid ")}
    if driver is not None:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == driver:
                    pids.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(pid for pid in pids if alive(pid))


def wait_for(condition, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def start_reproduce(tree):
    return subprocess.Popen([sys.executable, str(ROOT / "reproduce.py"), str(tree), "--device", "cpu",
                             "--no-figures", "--jobs", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def epochs_written(folder):
    path = folder / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_or_sigkill_of_reproduce_leaves_no_training_behind(tmp_path):
    tree = tmp_path / "tree"
    for name in ("a", "b"):  # two long independent stages
        write_config(tree / name, num_epochs=500)
    driver = start_reproduce(tree)
    try:
        # last_model.tar follows the epoch's metrics row: wait for the checkpoints themselves
        wait_for(lambda: all((tree / n / "last_model.tar").exists() for n in ("a", "b")))
        driver.send_signal(signal.SIGTERM)  # to reproduce.py alone, as `kill PID` does
        _, err = driver.communicate(timeout=120)
        assert driver.returncode == 143
        assert "error: interrupted during a, b; run the same command again" in err
        assert tree_processes(tree) == []
        for name in ("a", "b"):
            checkpoint = load_checkpoint(tree / name / "last_model.tar")
            assert 1 <= checkpoint["epoch"] < 500
            assert "==== interrupted (exit 143)" in (tree / name / "reproduce.log").read_text()
        done = {name: epochs_written(tree / name) for name in ("a", "b")}
        driver = start_reproduce(tree)  # the same command resumes both
        wait_for(lambda: all(epochs_written(tree / n) > done[n] for n in done))
        children = tree_processes(tree, driver.pid)
        assert len(children) == 3  # the fork server and its two stages
        driver.kill()  # SIGKILL: nothing to forward, the kernel tells the children
        driver.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), seconds=60)
        for name in ("a", "b"):
            assert "error: interrupted by SIGTERM; " in (tree / name / "reproduce.log").read_text()
    finally:
        for pid in tree_processes(tree):
            os.kill(pid, signal.SIGKILL)


def test_an_error_of_the_driver_stops_the_running_children(tmp_path):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    plan = make_plan(tree)

    class Broken(TimedRunner):
        stopped = None

        def __call__(self, run, status, progress):
            if run.stage.name == "z_base/student":
                raise OSError("no such interpreter")
            return super().__call__(run, status, progress)

        def stop_all(self, signum):
            Broken.stopped = signum

    with pytest.raises(OSError, match="no such interpreter"):
        execute(plan, Broken(lambda r: 90.0, seconds=0.3, jobs=2), quiet())
    assert Broken.stopped == signal.SIGTERM


@pytest.mark.parametrize("argv, cuda, jobs", [
    ([], 0, "cores"),                            # a CPU: one stage per core, 1 thread each
    (["--threads", "2"], 0, "cores // 2"),
    ([], 1, 1),                                  # stages on CUDA: one at a time (their memory)
    (["--device", "cpu"], 1, "cores"),           # ... unless told to train on the CPU
    (["--gpus", "0,1,2,3"], 4, 4),               # a stage per GPU
    (["--gpus", "0,1,2,3", "--nproc", "2"], 4, 2),
    (["--jobs", "3"], 0, 3),
])
def test_the_default_number_of_jobs(argv, cuda, jobs, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    args = reproduce.parse(["tree", *argv])
    reproduce.check_parallel(args, cuda_count=cuda)
    expected = {"cores": 8, "cores // 2": 4}.get(jobs, jobs)
    assert args.jobs == expected
