"""reproduce.py --set and --sweep: which stages a key reaches, where the runs go, the table and plot."""
import json

import pytest
from configs import FakeRunner, paper_tree, quiet
from PIL import Image

import reproduce
from repro.pipeline import make_plan, run_config
from repro.runner import execute
from repro.sweep import collect_sweep, render_sweep, sweep_plan
from utils.base.errors import ConfigError
from utils.base.provenance import fingerprint_text, numerics

NAMES = {"teacher": "z_base/teacher", "alone": "z_base/student", "nasty": "b_nasty/teacher",
         "normal_student": "a_kd_normal/student", "nasty_student": "a_kd_nasty/student"}


def _plan(tmp_path, sweep, seeds=None, overrides=None):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    return sweep_plan(make_plan(tree, seeds, overrides), sweep, overrides)


def test_weight_sweeps_the_nasty_teacher_and_its_students_only(tmp_path):
    plan = _plan(tmp_path, "weight=0.02,0.08")
    assert plan.sweep.affected == [NAMES["nasty"], NAMES["nasty_student"]]
    shared = [r for r in plan.runs if r.variant is None]
    assert sorted(r.stage.name for r in shared) == sorted(
        [NAMES["teacher"], NAMES["alone"], NAMES["normal_student"]])
    assert all(r.folder == r.stage.folder for r in shared)  # in place, as without a sweep
    variant = {(r.stage.name, r.variant): r for r in plan.runs if r.variant}
    assert len(variant) == 4
    nasty = variant[NAMES["nasty"], "weight=0.08"]
    student = variant[NAMES["nasty_student"], "weight=0.08"]
    assert nasty.folder == tmp_path / "tree" / "sweep_weight" / "weight_0.08" / NAMES["nasty"]
    assert run_config(nasty, plan.base)["weight"] == 0.08
    assert run_config(nasty, plan.base)["adversarial_resume"] == "tree/z_base/teacher/best_model.tar"
    config = run_config(student, plan.base)
    assert "weight" not in config  # a kd student has no weight: it only reads the teacher
    assert config["teacher_resume"] == "tree/sweep_weight/weight_0.08/b_nasty/teacher/best_model.tar"
    assert student.parent_run is nasty


def test_temperature_reaches_nasty_teacher_and_every_kd_student(tmp_path):
    plan = _plan(tmp_path, "temperature=2,4,8", seeds=[0, 1])
    assert plan.sweep.affected == [NAMES["nasty"], NAMES["normal_student"], NAMES["nasty_student"]]
    assert len(plan.runs) == 2 * (2 + 3 * 3)
    run = next(r for r in plan.runs if r.stage.name == NAMES["normal_student"]
               and r.variant == "temperature=8" and r.seed == 1)
    config = run_config(run, plan.base)
    assert config["temperature"] == 8 and config["seed"] == 1
    assert config["teacher_resume"] == "tree/z_base/teacher/seed_1/best_model.tar"  # shared teacher


def test_a_defence_key_sweeps_only_the_students_of_that_defence(tmp_path):
    """Every defended student has every defence's keys in its schema (with defaults); a sweep of
    one reaches only the students whose teacher answers through that defence."""
    from configs import KD, write_config
    tree = paper_tree(tmp_path / "tree", tmp_path)
    teacher = str(tree / "z_base" / "teacher" / "best_model.tar")
    write_config(tree / "c_stingy" / "student", **KD, teacher_resume=teacher, teacher_output="sparse",
                 sparse_ratio=0.5)
    write_config(tree / "c_mad" / "student", **KD, teacher_resume=teacher, teacher_output="mad")
    for key, stage in (("sparse_ratio", "c_stingy/student"), ("mad_epsilon", "c_mad/student")):
        plan = sweep_plan(make_plan(tree), f"{key}=0.2,0.4")
        assert plan.sweep.affected == [stage]
        run = next(r for r in plan.runs if r.variant == f"{key}=0.4")
        assert run_config(run, plan.base)[key] == 0.4


def test_a_key_every_run_has_sweeps_every_stage(tmp_path):
    plan = _plan(tmp_path, "num_epochs=1,2")
    assert len(plan.sweep.affected) == 5 and all(r.variant for r in plan.runs)
    assert {r.num_epochs for r in plan.runs} == {1, 2}


@pytest.mark.parametrize("sweep,overrides,message", [
    ("wieght=1,2", None, r"--sweep wieght: unknown key \(did you mean 'weight'\?\)"),
    ("weight=0.1", None, r"two or more values"),
    ("weight=0.1,0.1", None, r"the values must be distinct"),
    ("weight=0.1,-1", None, r"nasty/teacher/params.json: weight = -1 must be >= 0"),
    ("seed=1,2", None, r"use --seeds"),
    ("weight=0.1,0.2", {"weight": 0.3}, r"--sweep weight and --set weight contradict"),
])
def test_bad_sweeps_are_one_line(tmp_path, sweep, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, sweep, overrides=overrides)


def test_set_reaches_the_stages_whose_method_has_the_key(tmp_path):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    plan = make_plan(tree, overrides={"alpha": 0.5, "num_epochs": 2})
    by_name = {r.stage.name: r for r in plan.runs}
    assert by_name[NAMES["normal_student"]].overrides == {"alpha": 0.5, "num_epochs": 2}
    assert by_name[NAMES["teacher"]].overrides == {"num_epochs": 2}
    assert by_name[NAMES["teacher"]].num_epochs == 2
    with pytest.raises(ConfigError, match=r"--set alhpa: unknown key \(did you mean 'alpha'\?\)"):
        make_plan(tree, overrides={"alhpa": 0.5})
    with pytest.raises(ConfigError, match=r"alpha = 2 must be >= 0 and <= 1"):
        make_plan(tree, overrides={"alpha": 2})


def test_sweep_table_has_a_row_per_value_with_every_series(tmp_path):
    plan = _plan(tmp_path, "weight=0.02,0.08", seeds=[0, 1])
    accuracy = {NAMES["teacher"]: 95.0, NAMES["alone"]: 90.0, NAMES["normal_student"]: 91.0,
                NAMES["nasty"]: 94.0, NAMES["nasty_student"]: 80.0}

    def by_run(run):  # a larger weight: a nastier teacher's student learns less
        drop = 100 * float(run.variant.split("=")[1]) if run.variant else 0.0
        return accuracy[run.stage.name] - (drop if run.stage.name == NAMES["nasty_student"] else 0) \
            + (run.seed or 0)
    outcomes = execute(plan, FakeRunner(by_run), quiet())
    results = collect_sweep(plan, outcomes)
    text = render_sweep(results)
    assert ("| weight | normal teacher | nasty teacher | net (4 ch.) alone | net (4 ch.) from normal "
            "| net (4 ch.) from nasty |") in text
    assert "| 0.02 | 95.50 ± 0.71 | 94.50 ± 0.71 | 90.50 ± 0.71 | 91.50 ± 0.71 | 78.50 ± 0.71 |" in text
    assert "| 0.08 | 95.50 ± 0.71 | 94.50 ± 0.71 | 90.50 ± 0.71 | 91.50 ± 0.71 | 72.50 ± 0.71 |" in text
    assert "### weight=0.08" in text  # and each value's own table below


@pytest.mark.slow
def test_a_real_sweep_end_to_end(tmp_path, capsys):
    tree = paper_tree(tmp_path / "tree", tmp_path)
    reproduce.main([str(tree), "--device", "cpu", "--sweep", "weight=0,0.5"])
    folder = tree / "sweep_weight"
    results = json.loads((folder / "results.json").read_text())
    assert [v["label"] for v in results["per_value"]] == ["weight=0", "weight=0.5"]
    for entry in results["per_value"]:
        weight = float(entry["label"].split("=")[1])
        nasty = entry["stages"][NAMES["nasty"]]
        assert nasty["runs"][0]["finished"] and nasty["params"]["weight"] == weight
        run_folder = folder / f"weight_{entry['label'].split('=')[1]}" / NAMES["nasty"]
        assert json.loads((run_folder / "params.json").read_text())["weight"] == weight
    with Image.open(folder / "sweep_weight.png") as image:
        assert image.size[0] > 100
    assert "![sweep of weight](sweep_weight.png)" in (folder / "results.md").read_text()
    # 7 distinct runs (3 shared, 2 per value), all trained here with reproduce.py's 1 thread
    text = fingerprint_text({**numerics("cpu"), "threads": 1})
    assert results["numerics"] == {text: 7}
    assert f"Numerics: {text} (every run)." in (folder / "results.md").read_text()
    # a second run trains nothing and the sweep folders are not taken for stages
    reproduce.main([str(tree), "--device", "cpu", "--sweep", "weight=0,0.5"])
    assert "0 of 7 runs to train" in capsys.readouterr().out
    assert len(make_plan(tree).stages) == 5


def test_a_finished_run_is_not_silently_kept_when_set_changes_it(tmp_path, capsys):
    from configs import fake_train

    from utils.base.checkpoint import save_checkpoint
    tree = paper_tree(tmp_path / "tree", tmp_path)
    plan = make_plan(tree)
    for run in plan.runs:  # trained with the configs' own values, params saved as the scripts do
        fake_train(run, 90.0)
        for name in ("best_model.tar", "last_model.tar"):
            save_checkpoint(run.folder / name, {"epoch": 1, "state_dict": {},
                                                "params": {**run.stage.params.as_dict()}})
    outcomes = execute(make_plan(tree, overrides={"alpha": 0.5}), FakeRunner(lambda r: 1.0), quiet())
    states = {key[0]: o.state for key, o in outcomes.items()}
    assert states == {NAMES["teacher"]: "done", NAMES["alone"]: "done", NAMES["nasty"]: "done",
                      NAMES["normal_student"]: "failed", NAMES["nasty_student"]: "failed"}
    message = outcomes[NAMES["normal_student"], None].message
    assert "alpha: trained with 0.9, now 0.5: delete its last_model.tar" in message
    # more epochs are not a change of recipe: the run resumes
    plan = make_plan(tree, overrides={"num_epochs": 2})
    assert {o.state for o in execute(plan, FakeRunner(lambda r: 1.0), quiet()).values()} == {"ran"}
