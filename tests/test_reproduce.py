"""reproduce.py: plan order, seeds, skip/resume, dry run, failures, the table and the figures.

Synthetic trees and a fake runner check the plan and the bookkeeping without training; one tiny
real chain on digits (1 epoch each, the real scripts in subprocesses) checks the table against
the runs' own metrics and the figures as image files.
"""
import json
import shutil
import subprocess
import sys

import pytest
from configs import KD, NASTY, FakeRunner, fake_train, paper_tree, quiet, write_config  # noqa: F401
from configs import TINY as NET
from conftest import ROOT
from PIL import Image

import methods
import reproduce
from methods.base import Role
from repro.pipeline import (
    Status,
    find_config_folders,
    make_plan,
    run_config,
    run_status,
    write_run_config,
)
from repro.progress import Progress
from repro.report import render_numerics
from repro.runner import Outcome, execute
from utils.base.checkpoint import save_checkpoint
from utils.base.errors import ConfigError, NastyError
from utils.base.provenance import fingerprint_text, numerics
from utils.training.tracking import read_metrics

ACCURACY = {"z_base/teacher": 95.0, "z_base/student": 90.0, "b_nasty/teacher": 94.0,
            "a_kd_normal/student": 91.0, "a_kd_nasty/student": 80.0}


def by_stage(run):
    return ACCURACY[run.stage.name] + (run.seed or 0)


# ----------------------------------------------------------------------------- the plan

def test_order_follows_the_checkpoints_not_the_names(tmp_path):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path))
    assert [s.name for s in plan.stages] == ["z_base/teacher", "z_base/student", "b_nasty/teacher",
                                             "a_kd_normal/student", "a_kd_nasty/student"]
    assert {s.name: (s.method.name, s.parent) for s in plan.stages} == {
        "z_base/teacher": ("scratch", None), "z_base/student": ("scratch", None),
        "b_nasty/teacher": ("nasty", "z_base/teacher"),
        "a_kd_normal/student": ("kd", "z_base/teacher"),
        "a_kd_nasty/student": ("kd", "b_nasty/teacher")}
    assert plan.base == tmp_path  # the folder the paths are written against: scripts run there


def test_absolute_folder_from_another_directory_finds_the_same_plan(tmp_path, monkeypatch):
    paper_tree(tmp_path / "tree", tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    plan = make_plan(tmp_path / "tree")
    assert plan.base == tmp_path and plan.stage("a_kd_nasty/student").parent == "b_nasty/teacher"
    assert plan.stage("a_kd_nasty/student").checkpoint == \
        tmp_path / "tree" / "b_nasty" / "teacher" / "best_model.tar"


def test_published_trees_plan_teachers_then_nasty_then_students():
    for tree, stages in (("CIFAR10", 21), ("CIFAR100", 65), ("TinyImageNet", 24), ("Digits", 5),
                         ("DigitsAttacks", 50), ("DigitsDataFree", 7)):
        plan = make_plan(ROOT / "experiments" / tree)
        assert len(plan.stages) == stages and plan.base == ROOT
        position = {s.name: i for i, s in enumerate(plan.stages)}
        for stage in plan.stages:
            assert stage.parent is None or position[stage.parent] < position[stage.name]
        modes = [s.method.name for s in plan.stages]
        last_nasty = max(i for i, m in enumerate(modes) if m == "nasty")
        # networks trained on labels alone first (normal teachers, students alone, with or without
        # label smoothing)
        assert {s.method.role for s in plan.stages[:modes.index("nasty")]} == {Role.TEACHER}
        from_nasty = [position[s.name] for s in plan.stages
                      if s.method.name == "kd" and plan.stage(s.parent).method.name == "nasty"]
        assert min(from_nasty) > last_nasty


def test_external_teacher_is_fine_a_missing_one_is_one_line(tmp_path):
    teacher = tmp_path / "downloaded.tar"
    save_checkpoint(teacher, {"epoch": 1, "state_dict": {}})
    write_config(tmp_path / "tree" / "student", **KD, teacher_resume=str(teacher))
    plan = make_plan(tmp_path / "tree")
    assert plan.stages[0].parent is None and plan.stages[0].checkpoint == teacher
    write_config(tmp_path / "tree" / "other", **KD, teacher_resume="nowhere/best_model.tar")
    with pytest.raises(ConfigError) as error:
        make_plan(tmp_path / "tree")
    assert "other/params.json: teacher_resume 'nowhere/best_model.tar' is neither written by a " \
           "stage under" in str(error.value) and "\n" not in str(error.value)


def test_a_cycle_is_one_line(tmp_path):
    tree = tmp_path / "tree"
    write_config(tree / "a", **KD, teacher_resume=str(tree / "b" / "best_model.tar"))
    write_config(tree / "b", **KD, teacher_resume=str(tree / "a" / "best_model.tar"))
    with pytest.raises(ConfigError, match=r"^dependency cycle: a -> b -> a \(each stage needs"):
        make_plan(tree)


@pytest.mark.slow
def test_bad_config_and_empty_folder_stop_the_plan_with_one_line(tmp_path):
    write_config(tmp_path / "tree" / "t", num_epochs=0)
    result = subprocess.run([sys.executable, str(ROOT / "reproduce.py"), str(tmp_path / "tree")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"error: {tmp_path / 'tree' / 't' / 'params.json'}: num_epochs = 0 "
                             "must be >= 1\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no params.json below this folder"):
        make_plan(tmp_path / "empty")


# ----------------------------------------------------------------------------- seeds, state, dry run

def test_seed_runs_read_their_own_seeds_teacher(tmp_path):
    teacher = tmp_path / "downloaded.tar"
    save_checkpoint(teacher, {"epoch": 1, "state_dict": {}})
    tree = paper_tree(tmp_path / "tree", tmp_path)
    write_config(tree / "c_external" / "student", **KD, teacher_resume=str(teacher))
    plan = make_plan(tree, seeds=[0, 2])
    assert [(r.stage.name, r.seed) for r in plan.runs[:2]] == [("z_base/teacher", 0),
                                                                ("z_base/student", 0)]
    assert len(plan.runs) == 12 and plan.runs[6].seed == 2  # seed by seed
    run = next(r for r in plan.runs if r.stage.name == "a_kd_nasty/student" and r.seed == 2)
    write_run_config(run, plan.base)
    written = json.loads((tree / "a_kd_nasty" / "student" / "seed_2" / "params.json").read_text())
    assert written == {**NET, **KD, "seed": 2,
                       "teacher_resume": "tree/b_nasty/teacher/seed_2/best_model.tar"}
    external = next(r for r in plan.runs if r.stage.name == "c_external/student")
    assert run_config(external, plan.base)["teacher_resume"] == str(teacher)  # one external teacher for all
    # the per-seed copies are runs, not new stages
    assert len(find_config_folders(tree)) == 6 and len(make_plan(tree, seeds=[0, 2]).stages) == 6


def test_done_needs_every_epoch_and_best_model(tmp_path):
    tree = tmp_path / "tree"
    write_config(tree / "t", num_epochs=3)
    run = make_plan(tree).runs[0]
    assert run_status(run) == ("new", 0, 3)
    fake_train(run, 90.0, epochs=2)
    assert run_status(run) == ("resume", 2, 3)
    fake_train(run, 90.0, epochs=3)
    assert run_status(run) == ("done", 3, 3)
    (run.folder / "best_model.tar").unlink()
    assert run_status(run) == ("resume", 3, 3)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    tree = paper_tree(tmp_path / "tree", tmp_path, epochs=2)
    plan = make_plan(tree)
    fake_train(plan.runs[0], 95.0)
    fake_train(plan.runs[1], 90.0, epochs=1)
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    reproduce.main([str(tree), "--dry-run", "--seeds", "0", "1"])
    reproduce.main([str(tree), "--dry-run"])
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"Plan for {tree}: 5 stages, seeds 0, 1, 10 runs; the scripts run in ")
    assert out[2].split()[:6] == ["1", "z_base/teacher", "scratch", "net", "-", "seed"]
    assert out[5].split()[:4] == ["4", "a_kd_normal/student", "kd", "net"]
    assert "teacher: z_base/teacher" in out[5]
    assert out[7] == "10 of 10 runs to train; finished ones are skipped, started ones resume"
    assert out[8].startswith("Up to ") and out[8].endswith(" stage(s) at a time, 1 intra-op thread(s) each")
    in_place = out[9:]
    assert in_place[2].endswith("done (2/2 epochs)") and in_place[3].endswith("resume after epoch 1/2")
    assert in_place[-2].startswith("4 of 5 runs to train")


# ----------------------------------------------------------------------------- running (fake scripts)

def test_finished_runs_are_skipped_and_started_ones_resume(tmp_path):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path, epochs=2))
    fake_train(plan.runs[0], 95.0)
    fake_train(plan.runs[1], 90.0, epochs=1)
    runner = FakeRunner(by_stage)
    outcomes = execute(plan, runner, quiet())
    assert runner.calls == [("z_base/student", None, "resume", 1), ("b_nasty/teacher", None, "new", 0),
                            ("a_kd_normal/student", None, "new", 0),
                            ("a_kd_nasty/student", None, "new", 0)]
    assert [outcomes[r.key].state for r in plan.runs] == ["done", "ran", "ran", "ran", "ran"]
    runner = FakeRunner(by_stage)
    assert {o.state for o in execute(plan, runner, quiet()).values()} == {"done"}
    assert runner.calls == []


def test_a_failing_stage_stops_only_what_needs_it(tmp_path, monkeypatch, capsys):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    runner = FakeRunner(by_stage, fail={"b_nasty/teacher"})
    monkeypatch.setattr(reproduce, "SubprocessRunner", lambda *args, **kwargs: runner)
    monkeypatch.setattr(reproduce, "default_jobs", lambda *args: 1)  # the order the asserts read
    with pytest.raises(NastyError, match=r"^1 run\(s\) failed and 1 that need them were skipped"):
        reproduce.main([str(tree), "--no-figures"])
    out = capsys.readouterr().out
    log = tree / "b_nasty" / "teacher" / "reproduce.log"
    assert f"b_nasty/teacher (nasty, net): failed (exit 1), log: {log}\n    error: boom" in out
    assert "[5/5 " in out and "a_kd_nasty/student (kd, net): skipped: needs b_nasty/teacher, " \
                               "which failed" in out
    table = (tree / "results.md").read_text()
    assert "| Students trained alone | — | 90.00 |" in table
    assert "| net (normal) | 95.00 | 91.00 (+1.00) |" in table
    assert "| net (nasty) | — | — |" in table
    assert f"- `b_nasty/teacher` failed (exit 1), log: {log}: error: boom" in table
    assert "- `a_kd_nasty/student` skipped: needs b_nasty/teacher, which failed" in table
    results = json.loads((tree / "results.json").read_text())
    assert results["stages"]["a_kd_normal/student"]["best_acc"]["values"] == [91.0]


def test_a_finished_run_keeps_its_numbers_when_its_teacher_fails_later(tmp_path):
    plan = make_plan(paper_tree(tmp_path / "tree", tmp_path))
    for run in plan.runs:
        fake_train(run, ACCURACY[run.stage.name])
    write_config(tmp_path / "tree" / "b_nasty" / "teacher", num_epochs=3, **NASTY,
                 adversarial_resume=plan.stage("b_nasty/teacher").reference)  # more epochs: unfinished
    plan = make_plan(tmp_path / "tree")
    outcomes = execute(plan, FakeRunner(by_stage, fail={"b_nasty/teacher"}), quiet())
    assert outcomes["b_nasty/teacher", None].state == "failed"
    assert outcomes["a_kd_nasty/student", None].state == "done"


def test_seeds_give_mean_and_sample_std(tmp_path, monkeypatch):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    runner = FakeRunner(by_stage)  # accuracy + seed: seeds 0, 1, 2 give x, x+1, x+2
    monkeypatch.setattr(reproduce, "SubprocessRunner", lambda *args, **kwargs: runner)
    monkeypatch.setattr(reproduce, "default_jobs", lambda *args: 1)  # the order the asserts read
    reproduce.main([str(tree), "--no-figures", "--seeds", "0", "1", "2"])
    assert len(runner.calls) == 15 and runner.calls[5][:2] == ("z_base/teacher", 1)
    table = (tree / "results.md").read_text()
    assert "Seeds: 0, 1, 2." in table
    assert "| Students trained alone | — | 91.00 ± 1.00 |" in table
    assert "| net (normal) | 96.00 ± 1.00 | 92.00 ± 1.00 (+1.00) |" in table
    assert "| net (nasty) | 95.00 ± 1.00 (-1.00) | 81.00 ± 1.00 (-10.00) |" in table
    assert "| `z_base/teacher` | scratch | net | 3 ran | 96.00 ± 1.00 | 1 of 1 | 4.5 | — |" in table
    # one seed's student lost: the cell says so
    shutil.rmtree(tree / "a_kd_nasty" / "student" / "seed_2")
    runner.fail = {"a_kd_nasty/student"}
    with pytest.raises(NastyError):
        reproduce.main([str(tree), "--no-figures", "--seeds", "0", "1", "2"])
    assert "| net (nasty) | 95.00 ± 1.00 (-1.00) | 80.50 ± 0.71 (2 of 3 seeds) (-10.50) |" in \
        (tree / "results.md").read_text()


def test_progress_shows_position_stage_and_epoch():
    import io
    stream = io.StringIO()
    plan_run = type("R", (), {"label": "base/t [seed 1]", "folder": ROOT, "key": ("base/t", 1),
                              "stage": type("S", (), {"method": methods.base.get_method("scratch"),
                                                      "params": type("P", (), {"model_name": "net"})})})
    progress = Progress(stream=stream, live=True)
    progress.begin(5)
    progress.start(2, plan_run, Status("new", 0, 15))
    progress.output(plan_run, "Epoch 3/15\n")
    progress.output(plan_run, "- Eval metrics : acc: 97.214 ; loss: 0.100\n")
    progress.end(2, plan_run, Outcome("skipped", message="needs x, which failed"))
    text = stream.getvalue()
    assert "\r\x1b[K[2/5 0:00:00] base/t [seed 1] (scratch, net): epoch 3/15, test acc 97.21" in text
    assert text.endswith("\r\x1b[K[2/5 0:00:00] base/t [seed 1] (scratch, net): skipped: needs x, "
                         "which failed\n")


# ----------------------------------------------------------------------------- a real tiny chain

@pytest.fixture(scope="module")
def digits_chain(tmp_path_factory):
    """The paper's five stages on digits, 1 epoch each, run by reproduce.py with the real scripts:
    `mlp` teachers (normal and nasty) and 4-channel `net` students."""
    base = tmp_path_factory.mktemp("digits")
    tree = paper_tree(base / "tree", base)
    mlp = {"model_name": "mlp", "num_channels": None, "dropout_rate": None}
    for folder, key in (("z_base/teacher", None), ("b_nasty/teacher", "adversarial_model"),
                        ("a_kd_normal/student", "teacher_model"),
                        ("a_kd_nasty/student", "teacher_model")):
        config = json.loads((tree / folder / "params.json").read_text())
        config.update({key: "mlp"} if folder.endswith("student") else mlp)
        if folder.startswith("b_nasty"):
            config["adversarial_model"] = "mlp"
        (tree / folder / "params.json").write_text(json.dumps(
            {k: v for k, v in config.items() if k is not None and v is not None}))
    reproduce.main([str(tree), "--device", "cpu"])
    return tree


def best(tree, stage):
    return read_metrics(tree / stage / "metrics.jsonl")[-1]["best_acc"]


@pytest.mark.slow
def test_tiny_chain_table_holds_the_runs_own_numbers(digits_chain, capsys):
    tree = digits_chain
    acc = {stage: best(tree, stage) for stage in ACCURACY}
    table = (tree / "results.md").read_text()
    alone, normal, nasty = acc["z_base/student"], acc["a_kd_normal/student"], acc["a_kd_nasty/student"]
    assert (f"| Students trained alone | — | {alone:.2f} |") in table
    assert (f"| mlp (normal) | {acc['z_base/teacher']:.2f} | {normal:.2f} "
            f"({normal - alone:+.2f}) |") in table
    assert (f"| mlp (nasty) | {acc['b_nasty/teacher']:.2f} "
            f"({acc['b_nasty/teacher'] - acc['z_base/teacher']:+.2f}) | {nasty:.2f} "
            f"({nasty - alone:+.2f}) |") in table
    results = json.loads((tree / "results.json").read_text())
    group = results["groups"][0]
    assert group["students"][0]["nasty"]["acc"]["values"] == [nasty]
    assert group["students"][0]["nasty"]["delta"] == pytest.approx(nasty - alone)
    comparison = group["comparison"]
    assert comparison["images"] == 359 and comparison["temperature"] == 4.0
    assert len(comparison["per_class_kl"]) == 10 and comparison["mean_kl"] > 0
    assert sum(comparison["normal_ranked"]) == pytest.approx(1.0, abs=1e-4)  # all 10 ranks shown
    for stage in results["stages"].values():
        run = stage["runs"][0]
        assert run["state"] == "ran" and run["epochs"] == 1 and run["wall_seconds"] > 0
        assert run["log"].endswith("reproduce.log")


@pytest.mark.slow
def test_tiny_chain_says_under_which_numerics_its_numbers_hold(digits_chain):
    facts = {**numerics("cpu"), "threads": 1}  # reproduce.py gives every stage 1 thread
    text = fingerprint_text(facts)
    results = json.loads((digits_chain / "results.json").read_text())
    assert results["numerics"] == {text: 5}
    assert all(stage["runs"][0]["numerics"] == [text] for stage in results["stages"].values())
    table = (digits_chain / "results.md").read_text()
    assert f"Numerics: {text} (every run)." in table
    assert table.index("Numerics:") < table.index("## Stages")  # under the paper's table


def test_runs_trained_under_several_fingerprints_are_listed_apart():
    avx2, avx512 = "torch 2.14.1, cpu AVX2, 1 thread", "torch 2.14.1, cpu AVX512, 1 thread"
    runs = {"a": {"runs": [{"numerics": [avx2]}, {"numerics": [avx2]}]},
            "b": {"runs": [{"numerics": [avx512]}, {"numerics": []}]}}
    assert render_numerics({"numerics": {avx2: 2, avx512: 1}, "stages": runs}) == [
        "Numerics: the runs were trained under several fingerprints, so their exact numbers come "
        "from different machines or settings:",
        f"- {avx2}: 2 run(s)", f"- {avx512}: 1 run(s)",
        "- none recorded (for some or all epochs): 1 run(s)", ""]
    # one fingerprint, but a run resumed from epochs trained before fingerprints existed
    partial = {"a": {"runs": [{"numerics": [avx2]}, {"numerics": [avx2], "numerics_partial": True}]}}
    assert render_numerics({"numerics": {avx2: 2}, "stages": partial})[0].startswith(
        f"Numerics: {avx2} (1 of 2 runs; the others record none for some or all epochs")
    assert render_numerics({"numerics": {}, "stages": {}}) == []


def test_tiny_chain_figures_are_real_images(digits_chain):
    for name in ("softmax_mlp.png", "nasty_mlp.png", "curves_mlp.png"):
        path = digits_chain / name
        assert 5_000 < path.stat().st_size < 200_000
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert 400 <= width <= 1200 and 150 <= height <= 900
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert len(colors) > 50  # drawn bars and lines, not a blank canvas
        assert f"![{name[:-4]}]({name})" in (digits_chain / "results.md").read_text()


@pytest.mark.slow
def test_second_run_skips_everything_and_keeps_the_numbers(digits_chain, capsys):
    before = (digits_chain / "results.json").read_text()
    attempts = (digits_chain / "z_base" / "teacher" / "reproduce.jsonl").read_text()
    reproduce.main([str(digits_chain), "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count(": finished earlier, skipped, best ") == 5 and "[5/5 " in out
    assert (digits_chain / "z_base" / "teacher" / "reproduce.jsonl").read_text() == attempts
    after = json.loads((digits_chain / "results.json").read_text())
    assert {s["runs"][0]["state"] for s in after["stages"].values()} == {"done"}
    old = json.loads(before)
    for name, stage in after["stages"].items():
        assert stage["best_acc"] == old["stages"][name]["best_acc"]


@pytest.mark.slow
def test_an_unfinished_run_resumes(digits_chain, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(digits_chain / "z_base" / "student", tree / "student")
    write_config(tree / "student", num_epochs=2)
    reproduce.main([str(tree), "--device", "cpu", "--no-figures"])
    assert [r["epoch"] for r in read_metrics(tree / "student" / "metrics.jsonl")] == [1, 2]
    log = (tree / "student" / "reproduce.log").read_text()
    assert f"- Resumed from {tree / 'student' / 'last_model.tar'}: continuing after epoch 1" in log
    assert "--resume auto" in log


@pytest.mark.slow
def test_nproc_trains_each_stage_under_torchrun(tmp_path, capsys):
    tree = tmp_path / "tree"
    write_config(tree / "alone", batch_size=100)
    reproduce.main([str(tree), "--device", "cpu", "--nproc", "2", "--no-figures"])
    attempt = json.loads((tree / "alone" / "reproduce.jsonl").read_text().splitlines()[-1])
    assert "repro/launch.py --standalone --nproc_per_node=2 " in attempt["command"]
    assert attempt["threads"] == "1" and attempt["gpus"] is None
    assert "torchrun: 2 processes; global batch 100" in (tree / "alone" / "training.log").read_text()
    assert f"| `alone` | scratch | net | ran | {best(tree, 'alone'):.2f} | 1 of 1 |" in \
        (tree / "results.md").read_text()
    with pytest.raises(ConfigError, match="--nproc 0: give 1 or more"):
        reproduce.main([str(tree), "--nproc", "0"])


@pytest.mark.slow
def test_a_real_failure_names_its_log_and_keeps_the_rest(digits_chain, tmp_path, capsys):
    tree = tmp_path / "tree"
    shutil.copytree(digits_chain / "z_base" / "student", tree / "alone")  # finished: skipped
    (tmp_path / "broken.tar").write_text("not a checkpoint")
    write_config(tree / "student", **KD, teacher_resume=str(tmp_path / "broken.tar"))
    write_config(tree / "grandchild", **KD, teacher_resume=str(tree / "student" / "best_model.tar"))
    with pytest.raises(NastyError, match=r"^1 run\(s\) failed and 1 that need them were skipped"):
        reproduce.main([str(tree), "--device", "cpu"])
    log = tree / "student" / "reproduce.log"
    out = capsys.readouterr().out
    assert f"student (kd, net): failed (exit 1), log: {log}" in out
    assert f"\nerror: checkpoint {tmp_path / 'broken.tar'} " in log.read_text()
    table = (tree / "results.md").read_text()
    assert f"| `alone` | scratch | net | done | {best(tree, 'alone'):.2f} | 1 of 1 |" in table
    assert "| `grandchild` | kd | net | skipped | — | 0 of 1 |" in table


def test_without_matplotlib_the_table_stays_and_says_why(digits_chain, monkeypatch):
    from repro import figures
    from repro.report import collect, render
    monkeypatch.setattr(figures, "pyplot", lambda: None)
    plan = make_plan(digits_chain)
    results = collect(plan, {})
    figures.add_figures(plan, results)
    text = render(results)
    assert "- matplotlib is not installed, so there are no figures (pip install matplotlib)" in text
    assert results["groups"][0]["figures"] == [] and "![" not in text
    assert results["groups"][0]["comparison"]["images"] == 359  # the numbers need no matplotlib
    assert f"| Students trained alone | — | {best(digits_chain, 'z_base/student'):.2f} |" in text


def test_a_figure_that_breaks_is_a_note_not_a_lost_table(digits_chain, monkeypatch):
    from repro import figures
    from repro.report import collect, render

    def broken(*args, **kwargs):
        raise ValueError("bad axes")
    monkeypatch.setattr(figures, "group_figures", broken)
    plan = make_plan(digits_chain)
    results = collect(plan, {})
    figures.add_figures(plan, results)
    text = render(results)
    assert "no figures for" in text and "ValueError: bad axes" in text
    assert f"| Students trained alone | — | {best(digits_chain, 'z_base/student'):.2f} |" in text


def test_readme_quick_start_is_reproduce_with_its_figure():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    command = "pip install -r requirements.txt\npython reproduce.py experiments/Digits"
    assert f"```bash\n{command}\n```" in quick
    assert "| Teacher network | Teacher accuracy | net (4 ch.) |" in quick
    figure = ROOT / "docs" / "digits_softmax.png"
    assert "](docs/digits_softmax.png)" in quick and figure.stat().st_size < 200_000
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size[0] >= 400
