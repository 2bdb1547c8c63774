"""reproduce.py --launcher slurm (repro/slurm.py): options and one-line errors, which runs get a
job and after which job, the job's stop on a time limit or preemption, and a real one-node SLURM
cluster (tests/slurm_cluster.py) running a small Digits tree to the local launcher's weights."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from configs import fake_train, paper_tree
from slurm_cluster import ClusterError, SlurmCluster, missing_reason

import repro.slurm as slurm
from repro.pipeline import make_plan
from repro.slurm import Action, SlurmOptions, StageJob
from utils.base.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def args(**values):
    base = dict(launcher="slurm", partition=None, account=None, time=None, gpus_per_stage=None,
                cpus_per_stage=None, sbatch=None, wait=False, poll=None, jobs=None, gpus=None,
                no_fork=False, device=None, nproc=1, threads=1)
    return Namespace(**{**base, **values})


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("2:00:00", 120),
                                           ("1-0", 1440), ("1-2:30", 1590), ("0-0:0:1", 1)])
def test_slurm_times_in_every_sbatch_format(text, minutes):
    assert slurm.parse_time(text, "--time") == minutes


@pytest.mark.parametrize("text", ["", "1h", "0", "1:2:3:4", "-5"])
def test_a_bad_time_is_one_line(text):
    with pytest.raises(ConfigError, match="--time"):
        slurm.parse_time(text, "--time")


def test_extra_sbatch_options_and_the_ones_reproduce_sets_itself():
    assert slurm.parse_sbatch(["qos=high", "--exclusive", "mail_type=END"]) == \
        {"qos": "high", "exclusive": True, "mail-type": "END"}
    with pytest.raises(ConfigError, match="sets --dependency itself"):
        slurm.parse_sbatch(["dependency=afterok:1"])


@pytest.mark.parametrize("values, message", [
    (dict(launcher="local", partition="gpu"), "--partition needs --launcher slurm"),
    (dict(launcher="local", wait=True), "--wait needs --launcher slurm"),
    (dict(jobs=4), "--jobs is for --launcher local"),
    (dict(gpus=[0, 1]), "--gpus is for --launcher local"),
])
def test_flags_of_the_other_launcher_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        slurm.check_launcher_flags(args(**values))


@pytest.mark.parametrize("values, message", [
    (dict(device="cuda", nproc=4, gpus_per_stage=2), "--nproc 4 runs 4 processes per stage"),
    (dict(device="cuda", gpus_per_stage=0), "the jobs would have no GPU"),
    (dict(device="cpu", gpus_per_stage=1), "with --device cpu"),
    (dict(cpus_per_stage=0), "--cpus-per-stage 0: give 1 or more"),
    (dict(nproc=0), "--nproc 0: give 1 or more"),
    (dict(time="soon"), "not a SLURM time"),
])
def test_job_sizes_that_cannot_work_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        slurm.options_from(args(**values), [])


def test_job_size_defaults():
    options = slurm.options_from(args(device="cuda", nproc=2, threads=3, time="4:00:00"), [])
    assert (options.gpus, options.cpus_per_stage, options.minutes) == (2, 6, 240)
    assert slurm.options_from(args(), []).gpus == 0


SINFO = "debug*|1|30:00|1:00:00|(null)\ngpu|3|n/a|2-00:00:00|gpu:a100:4\ngpu|1|n/a|2-00:00:00|gpu:a100:4\n"


@pytest.fixture
def fake_sinfo(monkeypatch):
    monkeypatch.setattr(slurm, "slurm_command", lambda argv: SINFO)
    return lambda name: name  # sbatch "exists"


def test_partitions_are_read_from_sinfo(fake_sinfo):
    partitions = slurm.read_partitions()
    assert partitions["debug"] == slurm.Partition("debug", 1, 30, 60, "", True)
    assert partitions["gpu"].nodes == 4 and partitions["gpu"].max_time == 2880


def test_no_sbatch_unknown_partition_and_no_gpus_are_one_line(fake_sinfo, tmp_path):
    with pytest.raises(ConfigError, match="no sbatch on this machine's PATH"):
        slurm.check_cluster(SlurmOptions(), [tmp_path], which=lambda name: None)
    with pytest.raises(ConfigError, match="no such partition .did you mean 'gpu'.. .it has: debug, gpu"):
        slurm.check_cluster(SlurmOptions(partition="gpus"), [tmp_path], which=fake_sinfo)
    with pytest.raises(ConfigError, match="partition debug has no GPUs"):
        slurm.check_cluster(SlurmOptions(gpus=1), [tmp_path], which=fake_sinfo)
    assert slurm.check_cluster(SlurmOptions(), [tmp_path], which=fake_sinfo).name == "debug"


def test_a_tree_on_a_local_file_system_is_refused_on_a_cluster_of_several_nodes(fake_sinfo, tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/home {tmp_path}/shared nfs4 rw 0 0\n")
    (tmp_path / "shared").mkdir()
    options = SlurmOptions(partition="gpu", gpus=1)
    with pytest.raises(ConfigError, match="on a local file system .ext4. but partition gpu has 4 nodes"):
        slurm.check_cluster(options, [tmp_path / "local"], which=fake_sinfo, mounts=mounts)
    slurm.check_cluster(options, [tmp_path / "shared" / "tree"], which=fake_sinfo, mounts=mounts)
    # one node: the node is this machine, whatever its file system
    slurm.check_cluster(SlurmOptions(), [tmp_path / "local"], which=fake_sinfo, mounts=mounts)


def job_row(run, job_id, after=None):
    run.folder.mkdir(parents=True, exist_ok=True)
    slurm.append_row(run.folder / slurm.JOBS_NAME, {"job_id": job_id, "after": after})


def fake_submit(submitted, first_id):
    """A stand-in for sbatch: records (stage, after) and numbers the jobs from first_id + 1."""
    def submit(run, after):
        submitted.append((run.stage.name, after))
        return first_id + len(submitted)
    return submit


def test_which_runs_get_a_job_and_after_which(tmp_path, monkeypatch):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path), None)
    run = {r.stage.name: r for r in plan.runs}
    fake_train(run["z_base/teacher"], 90.0)
    job_row(run["z_base/student"], "11")                    # cancelled: submitted again
    job_row(run["b_nasty/teacher"], "12")                   # running: left alone
    job_row(run["a_kd_nasty/student"], "13", after="12")    # waits for it: left alone
    job_row(run["a_kd_normal/student"], "14")               # squeue forgot it, not finished
    states = {"11": ("CANCELLED", "None"), "12": ("RUNNING", "None"), "13": ("PENDING", "Dependency")}
    decisions = slurm.decide(plan, states)
    assert {name: decisions[r.key].action for name, r in run.items()} == {
        "z_base/teacher": Action.DONE, "z_base/student": Action.SUBMIT,
        "b_nasty/teacher": Action.QUEUED, "a_kd_nasty/student": Action.QUEUED,
        "a_kd_normal/student": Action.SUBMIT}
    submitted = []
    ids = slurm.submit_all(plan, decisions, SlurmOptions(), 30, submit=fake_submit(submitted, 20))
    assert submitted == [("z_base/student", None), ("a_kd_normal/student", None)]
    assert ids[run["a_kd_nasty/student"].key] == "13"

    # the nasty teacher's job fails: it and the student waiting for it are submitted again,
    # the student after the new job, its old pending job cancelled first
    states["12"] = ("FAILED", "None")
    cancelled = []
    monkeypatch.setattr(slurm, "slurm_command", lambda argv: cancelled.append(argv))
    decisions = slurm.decide(plan, states)
    assert decisions[run["a_kd_nasty/student"].key].action == Action.SUBMIT
    submitted.clear()  # (the fake submit above wrote no rows: those two are submitted again too)
    ids = slurm.submit_all(plan, decisions, SlurmOptions(), 30, submit=fake_submit(submitted, 30))
    nasty = ids[run["b_nasty/teacher"].key]
    assert ("b_nasty/teacher", None) in submitted and ("a_kd_nasty/student", nasty) in submitted
    assert cancelled == [["scancel", "13"]]


def test_a_finished_run_stays_queued_until_its_job_has_ended(tmp_path):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path), None)
    teacher = next(r for r in plan.runs if r.stage.name == "z_base/teacher")
    fake_train(teacher, 90.0)
    job_row(teacher, "5")
    assert slurm.decide(plan, {"5": ("COMPLETING", "None")})[teacher.key].action == Action.QUEUED
    assert slurm.decide(plan, {"5": ("COMPLETED", "None")})[teacher.key].action == Action.DONE


def test_the_job_parameters_of_a_run(tmp_path):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path), [3])
    student = next(r for r in plan.runs if r.stage.name == "a_kd_nasty/student")
    options = SlurmOptions(partition="gpu", account="lab", gpus=2, nproc=2, threads=4,
                           sbatch={"qos": "high"})
    parameters = slurm.job_parameters(student, "41", options, 90)
    assert parameters["additional_parameters"] == {"qos": "high", "dependency": "afterok:41",
                                                   "kill-on-invalid-dep": "yes"}
    assert (parameters["gpus_per_node"], parameters["cpus_per_task"], parameters["time"],
            parameters["partition"], parameters["account"]) == (2, 8, 90, "gpu", "lab")
    assert parameters["job_name"] == "a_kd_nasty/student:seed3"


CHILD = """
import pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (folder / "saved").write_text("epoch 3")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(folder / "started").write_text("yes")
time.sleep(60)
"""


def test_a_time_limit_stops_the_script_with_sigterm_and_requeues_the_same_job(tmp_path):
    command = [sys.executable, "-c", CHILD, str(tmp_path)]
    job = StageJob(command, str(tmp_path), str(tmp_path), threads=1)
    errors = []
    thread = threading.Thread(target=lambda: run_catching(job, errors))
    thread.start()
    deadline = time.time() + 30
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(job.child.pid, signal.SIGUSR2)  # what SLURM sends every process of the job
    time.sleep(0.3)
    assert job.child.poll() is None, "the script must ignore USR2 (the job's handler acts on it)"
    again = job.checkpoint()
    thread.join(10)
    assert (tmp_path / "saved").read_text() == "epoch 3" and job.code == 143
    assert isinstance(again.function, StageJob) and again.function.command == command
    attempt = json.loads((tmp_path / "reproduce.jsonl").read_text().splitlines()[-1])
    assert attempt["exit_code"] == 143 and attempt["threads"] == "1"
    assert errors and "ended with exit 143" in errors[0]


def run_catching(job, errors):
    try:
        job()
    except Exception as exc:  # the job's error: what submitit records
        errors.append(str(exc))


# ----------------------------------------------------------------------------- a real cluster

def reproduce(tree, *flags, env=None, check=True):
    done = subprocess.run([sys.executable, str(ROOT / "reproduce.py"), str(tree), "--no-figures",
                           *flags], cwd=tree.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(done.stdout[-3000:] + done.stderr[-3000:])
    return done.stdout


def small_tree(root):
    """The paper's five stages, 2 epochs; the normal teacher (cancelled midway) and the student
    trained alone (requeued midway, as a preemption does) 8."""
    paper_tree(root, root.parent, epochs=2)
    for stage in ("z_base/teacher", "z_base/student"):
        config = json.loads((root / stage / "params.json").read_text())
        (root / stage / "params.json").write_text(json.dumps({**config, "num_epochs": 8}))
    return root


def epochs_done(folder):
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def weights(folder):
    return torch.load(folder / "best_model.tar", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_a_tree_on_a_real_slurm_cluster_ends_as_the_local_launcher(tmp_path):
    reason = missing_reason()
    if reason and not os.environ.get("NASTY_TEACHER_CI"):
        pytest.skip(f"no SLURM here: {reason}")  # in CI (.ci/run) this is a failure
    try:
        cluster = SlurmCluster(tmp_path / "cluster").__enter__()
    except ClusterError as exc:
        pytest.fail(f"SLURM could not start: {exc}")
    try:
        check_on_cluster(cluster, tmp_path)
    finally:
        cluster.__exit__()


def check_on_cluster(cluster, tmp_path):
    local, remote = small_tree(tmp_path / "local" / "tree"), small_tree(tmp_path / "slurm" / "tree")
    reproduce(local, "--threads", "1")
    first = reproduce(remote, "--launcher", "slurm", env=cluster.env)
    assert "5 job(s) submitted now" in first
    again = reproduce(remote, "--launcher", "slurm", env=cluster.env)
    assert "0 job(s) submitted now, 5 queued or running from before" in again

    teacher, alone = remote / "z_base" / "teacher", remote / "z_base" / "student"
    job_of = {folder: json.loads((folder / slurm.JOBS_NAME).read_text())["job_id"]
              for folder in (teacher, alone)}
    stops = {teacher: ["scancel"], alone: ["scontrol", "requeue"]}  # requeue: what preemption does
    deadline = time.time() + 120
    while stops and time.time() < deadline:
        for folder in [f for f in stops if epochs_done(f) >= 1]:
            assert epochs_done(folder) < 8, f"{folder} was not caught midway"
            subprocess.run([*stops.pop(folder), job_of[folder]], env=cluster.env, check=True)
        time.sleep(0.1)
    assert not stops, "the jobs did not start"
    # SLURM holds a requeued job back for about two minutes (BeginTime); let it start now
    deadline = time.time() + 60
    while cluster.squeue()[job_of[alone]] != "PENDING" and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_of[alone]}", "StartTime=now"],
                   env=cluster.env, capture_output=True)  # refused if it has started: fine
    while any(state in slurm.LIVE_STATES for state in cluster.squeue().values()):
        time.sleep(0.5)  # the teacher's dependents end (kill-on-invalid-dep); the requeued job reruns
    states = cluster.squeue()
    assert (states[job_of[teacher]], states[job_of[alone]]) == ("CANCELLED", "COMPLETED")
    assert len((alone / "reproduce.jsonl").read_text().splitlines()) == 2  # the same job, twice

    last = reproduce(remote, "--launcher", "slurm", "--wait", "--poll", "1", env=cluster.env)
    assert "4 job(s) submitted now" in last and "submitted again (job" in last
    attempts = (teacher / "reproduce.jsonl").read_text().splitlines()
    assert len(attempts) == 2 and "resum" in (teacher / "reproduce.log").read_text().lower()
    for stage in ("z_base/teacher", "z_base/student", "b_nasty/teacher", "a_kd_normal/student",
                  "a_kd_nasty/student"):
        mine, theirs = weights(local / stage), weights(remote / stage)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), stage
    numbers = [json.loads((tree / "results.json").read_text())["groups"] for tree in (local, remote)]
    assert numbers[0] == numbers[1]


def test_a_dry_run_prints_every_job_and_what_it_waits_for_and_submits_nothing(tmp_path, monkeypatch):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path), [0, 1])
    monkeypatch.setattr(slurm, "check_cluster", lambda options, folders: slurm.Partition(
        "debug", 1, 30, 60, "", True))
    monkeypatch.setattr(slurm, "job_states", lambda: {})
    monkeypatch.setattr(slurm, "submit_run", lambda *a: pytest.fail("a dry run submitted a job"))
    lines = []
    assert slurm.launch(plan, SlurmOptions(), dry_run=True, out=lines.append) is False
    text = "\n".join(lines)
    number = {run.key: i for i, run in enumerate(plan.runs, 1)}
    for run in plan.runs:  # seeds are jobs too, each after its own seed's parent
        after = f"job of #{number[run.parent_run.key]}" if run.parent_run else "-"
        assert re.search(rf"^  {number[run.key]} +{re.escape(run.label)} +\(new\) +{after} +to submit$",
                         text, re.M), run.label
    assert "10 job(s) to submit, 0 queued or running from before, 0 of 10 runs finished" in text
    assert not list(tmp_path.rglob(slurm.JOBS_NAME))
