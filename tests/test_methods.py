"""The method table: selection, schema, named terms, objectives that know the step and own heads."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from configs import KD, TINY, write_config

import methods
import train_kd
import train_scratch
from methods import params_from_dict
from methods.base import TABLE, Method, Objective, Role, register
from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.base.errors import ConfigError
from utils.base.provenance import cpu_model, fingerprint_text, numerics
from utils.base.schema import FLOAT, INT, Key, bounds
from utils.training.params import describe
from utils.training.tracking import read_metrics

# batches of 256: ceil(1438 / 256) = 6 steps an epoch, counted by test_objective_is_told_epoch_and_step
NET = {**TINY, "batch_size": 256}


# ----------------------------------------------------------------------------- a toy method with a head

class HeadObjective(Objective):
    """CE of the network, plus (after `delay` epochs) CE of a linear head on its logits."""

    def __init__(self, params):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
        self.delay = params.head_delay

    def forward(self, model, images, labels, at):
        logits = model(images)
        ce = F.cross_entropy(logits, labels)
        head = F.cross_entropy(self.head(logits), labels)
        on = float(at.epoch >= self.delay)
        return logits, {"loss": ce + on * head, "ce": ce, "head": head}


def _toy_method():
    if "toy_head" not in methods.base.method_names():
        register(Method(
            name="toy_head", script="scratch", role=Role.TEACHER, build=lambda p, f: HeadObjective(p),
            summary="test only: a head on the logits",
            keys=(Key("head_delay", INT, 1, "epochs before the head's loss counts", bounds(low=0)),),
            terms=("ce", "head")))
    return methods.base.get_method("toy_head")


def _train(folder, *extra):
    train_scratch.main(["--save_path", str(folder), "--device", "cpu", *extra])


# ----------------------------------------------------------------------------- the table

def test_the_original_three_are_entries_with_their_scripts_roles_and_terms():
    table = {name: methods.base.get_method(name) for name in ("scratch", "nasty", "kd")}
    assert {n: (m.script_file, m.role, m.terms) for n, m in table.items()} == {
        "scratch": ("train_scratch.py", Role.TEACHER, ("ce",)),
        "nasty": ("train_nasty.py", Role.DEFENDED_TEACHER, ("ce", "kl")),
        "kd": ("train_kd.py", Role.STUDENT, ("ce", "kl"))}
    assert [(f.role, f.model_key, f.resume_key) for f in table["kd"].frozen] == [
        ("teacher", "teacher_model", "teacher_resume")]
    assert [(f.role, f.resume_key) for f in table["nasty"].frozen] == [
        ("adversarial", "adversarial_resume")]


def test_without_a_method_key_the_keys_decide_as_before():
    kd = {**NET, "teacher_model": "net", "teacher_resume": "t.tar", "temperature": 4, "alpha": 0.9}
    nasty = {**NET, "adversarial_model": "net", "adversarial_resume": "a.tar", "temperature": 4,
             "weight": 0.04}
    assert params_from_dict(NET).method == "scratch"
    assert params_from_dict(kd).method == "kd"
    assert params_from_dict(nasty).method == "nasty"
    assert params_from_dict({**kd, **nasty}).method == "nasty"  # adversarial_resume first, as before
    assert params_from_dict(kd, "scratch").method == "scratch"  # a script runs its own method
    assert params_from_dict({**kd, "method": "kd"}, "kd").as_dict()["method"] == "kd"


def test_a_wrong_method_is_one_line_with_a_suggestion_and_the_right_script():
    with pytest.raises(ConfigError, match=r"method = 'kdd' is not a known method \(did you mean 'kd'\?\)"):
        params_from_dict({**NET, "method": "kdd"})
    kd = {**NET, "method": "kd", "teacher_model": "net", "teacher_resume": "t", "temperature": 4,
          "alpha": 0.9}
    with pytest.raises(ConfigError, match=r"method 'kd' runs with train_kd.py, not train_scratch.py"):
        params_from_dict(kd, "scratch")


def test_a_method_adds_its_keys_to_the_one_schema():
    _toy_method()
    params = params_from_dict({**NET, "method": "toy_head"}, "scratch")
    assert params.head_delay == 1 and params.method_entry.name == "toy_head"
    with pytest.raises(ConfigError, match=r"head_delay = -1 must be >= 0"):
        params_from_dict({**NET, "method": "toy_head", "head_delay": -1})
    with pytest.raises(ConfigError, match=r"unknown key 'head_dely' \(did you mean 'head_delay'\?\)"):
        params_from_dict({**NET, "method": "toy_head", "head_dely": 2})
    # another method's key: kept as given, not an attribute of the run
    assert params_from_dict({**NET, "head_delay": 2}).as_dict()["head_delay"] == 2
    assert "head_delay" in describe(TABLE, "toy_head") and "head_delay" not in describe(TABLE, "scratch")


def test_registering_a_clashing_method_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register(methods.base.get_method("kd"))
    other_temperature = Key("temperature", FLOAT, 1.0, "another meaning")
    with pytest.raises(ValueError, match="share one Key row"):
        register(Method(name="clash", script="kd", role=Role.STUDENT, build=None, summary="",
                        keys=(other_temperature,)))
    with pytest.raises(ValueError, match="reserved"):
        register(Method(name="clash", script="kd", role=Role.STUDENT, build=None, summary="",
                        terms=("loss",)))
    assert "clash" not in methods.base.method_names()


# ----------------------------------------------------------------------------- runs of a method

@pytest.mark.slow
def test_named_terms_reach_the_log_metrics_and_tensorboard(tmp_path):
    _toy_method()
    run = write_config(tmp_path / "run", NET, method="toy_head", head_delay=1, num_epochs=2)
    _train(run)
    rows = read_metrics(run / "metrics.jsonl")
    assert [sorted(k for k in r if k.startswith("train_")) for r in rows] == \
        [["train_acc", "train_ce", "train_head", "train_loss"]] * 2
    # epoch 1: the head is not counted yet, so the total is the CE; epoch 2: CE + head
    assert rows[0]["train_loss"] == pytest.approx(rows[0]["train_ce"], rel=1e-6)
    assert rows[1]["train_loss"] == pytest.approx(rows[1]["train_ce"] + rows[1]["train_head"], rel=1e-5)
    pytest.importorskip("tensorboardX")
    events = b"".join(p.read_bytes() for p in run.glob("events.out.tfevents.*"))
    for tag in (b"train/loss", b"train/ce", b"train/head", b"test/acc"):
        assert tag in events  # the tags are stored as plain strings in the event records


def test_objective_is_told_epoch_and_step(tmp_path):
    _toy_method()
    run = write_config(tmp_path / "run", NET, method="toy_head", num_epochs=2)
    seen = []
    original = HeadObjective.forward

    def spy(self, model, images, labels, at):
        seen.append(tuple(at))
        return original(self, model, images, labels, at)
    HeadObjective.forward = spy
    try:
        _train(run)
    finally:
        HeadObjective.forward = original
    steps = -(-1438 // 256)  # the digits training split, batches of 256
    assert seen == [(e, s, steps) for e in range(2) for s in range(steps)]


@pytest.mark.slow
def test_heads_train_and_are_saved_apart_from_the_plain_network(tmp_path):
    _toy_method()
    run = write_config(tmp_path / "run", NET, method="toy_head", head_delay=0)
    _train(run)
    checkpoint = load_checkpoint(run / "best_model.tar")
    assert not any(k.startswith("head") for k in checkpoint["state_dict"])
    assert sorted(checkpoint["objective_state_dict"]) == sorted(HeadObjective(
        params_from_dict({**NET, "method": "toy_head"})).state_dict())
    # the heads were in the optimizer: its state covers the network's and the head's parameters
    network = sum(1 for k in checkpoint["state_dict"] if "running" not in k and "num_batches" not in k)
    assert len(checkpoint["optim_dict"]["state"]) == network + 6
    # the network's state_dict is a plain teacher: a kd run loads it
    student = write_config(tmp_path / "student", NET, **KD, teacher_resume=str(run / "best_model.tar"))
    train_kd.main(["--save_path", str(student), "--device", "cpu"])
    assert "- Teacher Model Eval metrics : acc:" in (student / "training.log").read_text()


@pytest.mark.slow
def test_resume_with_heads_is_bitwise_the_uninterrupted_run(tmp_path):
    _toy_method()
    straight = write_config(tmp_path / "straight", NET, method="toy_head", head_delay=1, num_epochs=3)
    _train(straight)
    resumed = write_config(tmp_path / "resumed", NET, method="toy_head", head_delay=1, num_epochs=2)
    _train(resumed)
    write_config(resumed, NET, method="toy_head", head_delay=1, num_epochs=3)
    _train(resumed, "--resume", "auto")
    a, b = load_checkpoint(straight / "last_model.tar"), load_checkpoint(resumed / "last_model.tar")
    for part in ("state_dict", "objective_state_dict"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(straight / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"}
                     for r in read_metrics(resumed / "metrics.jsonl")]


def test_resuming_heads_from_a_checkpoint_without_them_is_one_line(tmp_path):
    _toy_method()
    plain = write_config(tmp_path / "plain", NET)
    _train(plain)
    run = write_config(tmp_path / "run", NET, method="toy_head", num_epochs=2)
    with pytest.raises(Exception, match=r"holds no 'objective_state_dict' for method 'toy_head'"):
        _train(run, "--resume", str(plain / "last_model.tar"))


# ----------------------------------------------------------------------------- --set and provenance

def test_set_overrides_are_validated_logged_and_saved(tmp_path):
    run = write_config(tmp_path / "run", NET)
    _train(run, "--set", "num_epochs=2", "--set", "learning_rate=0.002")
    checkpoint = load_checkpoint(run / "last_model.tar")
    assert checkpoint["epoch"] == 2 and checkpoint["params"]["learning_rate"] == 0.002
    assert checkpoint["method"] == "scratch" and "git_commit" in checkpoint
    assert "learning_rate:0.002" in (run / "training.log").read_text()
    assert json.loads((run / "params.json").read_text())["num_epochs"] == 1  # the file is untouched
    with pytest.raises(ConfigError, match=r"unknown key 'learing_rate' \(did you mean 'learning_rate'\?\)"):
        _train(run, "--set", "learing_rate=0.1")
    with pytest.raises(ConfigError, match=r"num_epochs = 'two' must be an integer, not a string"):
        _train(run, "--set", "num_epochs=two")


def test_set_of_a_key_the_method_does_not_use_is_refused_before_anything_is_written(tmp_path):
    run = write_config(tmp_path / "run", NET)
    before = sorted(p.name for p in run.iterdir())
    # alpha is kd's: a scratch run would ignore it, so the user would believe in a change not made
    with pytest.raises(ConfigError, match=r"^--set alpha: method 'scratch' does not use this key, so it "
                                          r"would change nothing \(the method's own keys: none\)$"):
        _train(run, "--set", "alpha=0.5")
    with pytest.raises(ConfigError, match=r"^--set weight: method 'kd' does not use this key.*"
                                          r"own keys: alpha, .*sparse_ratio, teacher_cache, teacher_model"):
        train_kd.main(["--save_path", str(write_config(tmp_path / "kd", NET, **KD,
                                                       teacher_resume="t.tar")),
                       "--device", "cpu", "--set", "weight=0.1"])
    assert sorted(p.name for p in run.iterdir()) == before


def test_runs_record_the_numerics_fingerprint_in_checkpoints_metrics_and_log(tmp_path):
    run = write_config(tmp_path / "run", NET)
    _train(run)
    facts = load_checkpoint(run / "last_model.tar")["numerics"]
    assert facts == {"torch": torch.__version__, "device": "cpu",
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "threads": torch.get_num_threads(), "cpu_model": cpu_model()}
    text = fingerprint_text(facts)
    assert text == (f"torch {torch.__version__}, cpu {facts['cpu_capability']}, {facts['threads']} "
                    f"thread{'s' if facts['threads'] != 1 else ''}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["numerics"] for r in rows] == [text]
    assert f"Numerics: {text}" in (run / "training.log").read_text()


@pytest.mark.slow
def test_a_run_resumed_under_another_fingerprint_says_so(tmp_path):
    run = write_config(tmp_path / "run", NET)
    _train(run)
    checkpoint = load_checkpoint(run / "last_model.tar")
    checkpoint["numerics"] = {**checkpoint["numerics"], "cpu_capability": "VSX"}  # a POWER machine
    save_checkpoint(run / "last_model.tar", checkpoint)
    _train(run, "--set", "num_epochs=2", "--resume", "auto")
    here = fingerprint_text(numerics("cpu"))
    there = here.replace(f"cpu {torch.backends.cpu.get_cpu_capability()}", "cpu VSX")
    assert (f"the epochs so far were trained under {there}, the rest will be under {here}: the "
            "exact numbers will match neither") in (run / "training.log").read_text()


def test_set_without_equals_sign_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        _train(write_config(tmp_path / "run", NET), "--set", "num_epochs")
    assert caught.value.code == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err
