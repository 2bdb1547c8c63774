"""The attacks' wiring on real runs, not only their losses (tests/test_attacks.py checks those by
hand): a teacher defence reaches what the student learns from, the skeptical student's kd_delay
and loc act when and where they say, and reproduce.py fills the defence x strategy matrix with the
runs' own numbers.

Everything goes through what a real run uses: the configs are read by the schema, the objective
is built by the method table in utils.training.engine.prepare, and the runs are the real scripts (in this
process, or as reproduce.py's subprocesses).
"""
import json
from types import SimpleNamespace

import pytest
import torch
from configs import KD, NASTY, TINY, write_config

import methods
import methods.kd
import methods.skeptical
import nets
import reproduce
import train_kd
import train_scratch
from methods.base import Objective, defended_logits
from methods.mad import MadAnswer
from utils.base.checkpoint import load_checkpoint
from utils.training.engine import prepare
from utils.training.step import Step
from utils.training.tracking import read_metrics


def defended(logits, teacher_output, sparse_ratio=1.0):
    """The defence table's answer for these keys, the others at their defaults (what a run with
    them hands out)."""
    return defended_logits(logits, SimpleNamespace(teacher_output=teacher_output,
                                                   sparse_ratio=sparse_ratio, reverse_sigmoid_beta=1.0,
                                                   reverse_sigmoid_gamma=0.1))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-channel `net` trained one epoch on digits (the students below are the same network)."""
    folder = write_config(tmp_path_factory.mktemp("teacher") / "teacher")
    train_scratch.main(["--save_path", str(folder)])
    return folder / "best_model.tar"


def _student(folder, teacher, **values):
    return write_config(folder, {**TINY, **KD}, teacher_resume=str(teacher), **values)


def _teacher_logits(teacher, images):
    """The teacher checkpoint's raw logits, computed here, apart from the run's own teacher."""
    network = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0)
    network.load_state_dict(load_checkpoint(teacher)["state_dict"])
    with torch.no_grad():
        return network.eval()(images)


# ----------------------------------------------------------------------------- defences

def _answered(raw, images, output, ratio):
    """What the defence hands out, computed here: MAD with its own surrogate, built as the defender's
    (the teacher's architecture from seed 0)."""
    if output != "mad":
        return defended(raw, output, ratio)
    torch.manual_seed(0)
    surrogate = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0).eval()
    with torch.no_grad():
        return MadAnswer(surrogate, 0.5, False)(images, raw)


@pytest.mark.slow
@pytest.mark.parametrize("method,output,ratio", [
    ("kd", "logits", 1.0), ("kd", "sparse", 0.3), ("kd", "reverse", 1.0),
    ("skeptical", "sparse", 0.2), ("skeptical", "reverse", 1.0), ("kd", "reverse_sigmoid", 1.0),
    ("kd", "mad", 1.0)])
def test_the_student_distils_from_the_defended_logits(tmp_path, teacher, monkeypatch, method, output,
                                                      ratio):
    """A real train_kd.py run: every soft target the student's KL term receives is the teacher's
    logits on that batch, as the defence hands them out; the run measured its teacher through the
    defence (teacher.json)."""
    seen_images, targets = [], []
    real_soft_kl = methods.kd.soft_kl

    def spy(target_logits, logits, T):
        targets.append(target_logits.detach().clone())
        return real_soft_kl(target_logits, logits, T)

    def objective_called(module, args):
        if isinstance(module, Objective):
            seen_images.append(args[1].detach().clone())
    monkeypatch.setattr(methods.kd, "soft_kl", spy)  # kd's loss and skeptical's read it by name
    monkeypatch.setattr(methods.skeptical, "soft_kl", spy)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(objective_called)
    try:
        folder = _student(tmp_path / "student", teacher, method=method, teacher_output=output,
                          sparse_ratio=ratio, batch_size=256)
        train_kd.main(["--save_path", str(folder)])
    finally:
        hook.remove()
    steps = -(-1438 // 256)  # the digits training split
    assert len(seen_images) == len(targets) == steps
    for images, target in zip(seen_images, targets):
        raw = _teacher_logits(teacher, images)
        torch.testing.assert_close(target, _answered(raw, images, output, ratio), rtol=1e-5, atol=1e-5)
        if output in ("logits", "sparse", "reverse"):  # these keep the argmax by construction
            assert torch.equal(target.argmax(1), raw.argmax(1))
        if output == "sparse":  # int(ratio * 10) logits kept, the rest -inf
            assert (torch.isfinite(target).sum(1) == int(ratio * 10)).all()
        if output == "reverse":
            assert not torch.allclose(target, raw)
            torch.testing.assert_close(target.sort(1).values, raw.sort(1).values)
    record = json.loads((folder / "teacher.json").read_text())
    log = (folder / "training.log").read_text()
    assert f"- Teacher Model Eval metrics : acc: {record['teacher_acc']:05.3f}" in log
    if output == "logits":
        assert set(record) == {"teacher_acc"}
    else:
        assert record["defence"] == output and 0 <= record["top_class_kept"] <= 100
        line = f"acc: {record['answered_acc']:05.3f} ; top class kept on {record['top_class_kept']:.2f}%"
        assert line in log
        if output in ("sparse", "reverse"):
            assert record["answered_acc"] == record["teacher_acc"] and record["top_class_kept"] == 100


# ----------------------------------------------------------------------------- skeptical: loc and kd_delay

def _args(folder):
    return SimpleNamespace(save_path=str(folder), data_dir=None, device="cpu", gpu_id=None, resume=None)


def _gradients(folder, epoch):
    """Gradients of the objective's total loss on the first training batch, by module (the network's
    own, 'heads.0', 'heads.1'), for a run prepared as train_kd.py prepares it."""
    run = prepare(_args(folder), methods.TABLE, "kd")
    run.train_model.train()
    run.objective.train()
    run.train_loader.set_epoch(0)
    images, labels = next(iter(run.train_loader))
    _, terms = run.objective(run.train_model, images, labels, Step(epoch, 0, len(run.train_loader)))
    named = [(f"{n.split('.')[0]}", p) for n, p in run.model.named_parameters()]
    named += [(".".join(n.split(".")[:2]), p) for n, p in run.objective.named_parameters()]
    grads = torch.autograd.grad(terms["loss"], [p for _, p in named], allow_unused=True)
    by_module = {}
    for (module, _), grad in zip(named, grads):
        by_module.setdefault(module, []).append(torch.zeros(()) if grad is None else grad)
    return by_module


# the network's modules in forward order; its stages are bn1, bn2 and bn3, and the heads sit on
# bn1 (heads.0, the shallowest: loc 2) and bn2 (heads.1, the deepest: loc 1)
NETWORK = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc1", "fcbn1", "fc2"]
TEACHER_REACHES = {0: set(NETWORK), 1: {"conv1", "bn1", "conv2", "bn2", "heads.1"},
                   2: {"conv1", "bn1", "heads.0"}}


@pytest.mark.slow
@pytest.mark.parametrize("loc", [0, 1, 2])
def test_the_teacher_term_reaches_the_head_loc_names_and_no_other(tmp_path, teacher, loc):
    """Two students that differ only in their teacher's outputs (its logits, or reversed): the
    gradients of their losses differ exactly where the teacher term flows, head `loc` and the
    layers below its tap; and not at all while the teacher is delayed (epoch <= kd_delay)."""
    runs = {output: _student(tmp_path / output, teacher, method="skeptical", loc=loc, kd_delay=0,
                             teacher_output=output) for output in ("logits", "reverse")}
    distilling = {o: _gradients(folder, epoch=1) for o, folder in runs.items()}
    assert set(distilling["logits"]) == set(NETWORK) | {"heads.0", "heads.1"}
    reached = {module for module, grads in distilling["logits"].items()
               if any(not torch.equal(a, b) for a, b in zip(grads, distilling["reverse"][module]))}
    assert reached == TEACHER_REACHES[loc]
    delayed = {o: _gradients(folder, epoch=0) for o, folder in runs.items()}
    for module, grads in delayed["logits"].items():  # epoch 0 <= kd_delay 0: cross-entropy alone
        assert all(torch.equal(a, b) for a, b in zip(grads, delayed["reverse"][module])), module


@pytest.mark.slow
def test_kd_delay_and_loc_in_a_real_runs_logged_terms(tmp_path, teacher):
    """kd_delay 1: the first two epochs (0-based 0 and 1) train on cross-entropy alone, the third
    adds the teacher term; loc 1 distils into the deepest auxiliary head, whose CE is ce_aux."""
    folder = _student(tmp_path / "student", teacher, method="skeptical", loc=1, kd_delay=1,
                      num_epochs=3, batch_size=256)
    train_kd.main(["--save_path", str(folder)])
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows[:2]:  # the logged kl is measured, but not trained on
        assert row["train_loss"] == row["train_ce"] and row["train_kl"] > 0
    last = rows[2]
    alpha = KD["alpha"]
    total = (alpha * last["train_kl"] + (1 - alpha) * last["train_ce_loc"] + 0.3 * last["train_self_kl"]
             + 0.7 * last["train_ce_aux"] + last["train_ce"])
    assert last["train_loss"] == pytest.approx(total, rel=1e-5)
    assert last["train_loss"] != pytest.approx(total - alpha * last["train_kl"], rel=1e-3)  # not without it
    for row in rows:  # head 1 is the one ce_aux is taken on; not the final head
        assert row["train_ce_loc"] == row["train_ce_aux"] != row["train_ce"]


# ----------------------------------------------------------------------------- the matrix, from real runs

STINGY = {"teacher_output": "sparse", "sparse_ratio": 0.2}
MATRIX_STUDENTS = {f"{row}/{method}": (method, row) for row in ("normal", "nasty", "stingy")
                   for method in ("kd", "hard_label")}


# a step size at which one epoch learns something, so that the cells differ; the teacher has
# another seed than the student alone (else the two would be the same run)
MATRIX_RUN = {**TINY, "learning_rate": 0.005}


def _matrix_tree(root):
    teacher = write_config(root / "z_base" / "teacher", MATRIX_RUN, seed=1)
    write_config(root / "z_base" / "student", MATRIX_RUN)
    nasty = write_config(root / "b_nasty" / "teacher", MATRIX_RUN, **NASTY,
                         adversarial_resume=str(teacher / "best_model.tar"))
    for folder, (method, row) in MATRIX_STUDENTS.items():
        source = nasty if row == "nasty" else teacher
        values = {**KD, "method": method, "teacher_resume": str(source / "best_model.tar"),
                  **(STINGY if row == "stingy" else {})}
        if method == "hard_label":
            values = {k: v for k, v in values.items() if k not in ("temperature", "alpha")}
        write_config(root / folder, MATRIX_RUN, **values)
    return root


@pytest.mark.slow
def test_the_matrix_is_filled_from_real_runs(tmp_path):
    """reproduce.py on a tree of 9 tiny digits runs (one epoch): a normal, a nasty and a stingy
    teacher, students kd and hard_label of each (the other strategies' columns are filled the same
    way: tests/test_attacks.py); every cell is its run's own number, and the stingy row's teacher
    is what its students measured through the defence."""
    tree = _matrix_tree(tmp_path / "tree")
    reproduce.main([str(tree), "--device", "cpu", "--no-figures"])

    def best(stage):
        return read_metrics(tree / stage / "metrics.jsonl")[-1]["best_acc"]
    results = json.loads((tree / "results.json").read_text())
    assert len(results["matrices"]) == 1
    matrix = results["matrices"][0]
    assert (matrix["teacher"], matrix["student"]) == ("z_base/teacher", "net (4 ch.)")
    assert matrix["strategies"] == ["kd", "hard_label"]
    alone = best("z_base/student")
    assert matrix["alone"]["stage"] == "z_base/student" and matrix["alone"]["acc"]["values"] == [alone]
    rows = {row["defence"]: row for row in matrix["rows"]}
    assert list(rows) == ["normal", "nasty", "stingy (sparse 0.2)"]
    normal = best("z_base/teacher")
    for label, name, teacher in (("normal", "normal", "z_base/teacher"),
                                 ("nasty", "nasty", "b_nasty/teacher"),
                                 ("stingy (sparse 0.2)", "stingy", "z_base/teacher")):
        row = rows[label]
        assert row["teacher"]["stage"] == teacher and row["teacher"]["acc"]["values"] == [best(teacher)]
        if name == "stingy":  # through the defence, which keeps the argmax: the teacher's own number
            assert row["teacher"]["delta"] == 0 and row["teacher"]["top_class_kept"]["values"] == [100.0]
        else:
            assert row["teacher"]["delta"] == (None if teacher == "z_base/teacher"
                                               else pytest.approx(best(teacher) - normal))
        cells = []
        for method in matrix["strategies"]:
            stage = f"{name}/{method}"
            entry = row["cells"][method]
            assert entry["stage"] == stage and entry["acc"]["values"] == [best(stage)]
            assert entry["delta"] == pytest.approx(best(stage) - alone)
            cells.append(f"{best(stage):.2f} ({best(stage) - alone:+.2f})")
        shown = f"{best(teacher):.2f}"
        if teacher != "z_base/teacher":
            shown += f" ({best(teacher) - normal:+.2f})"
        if name == "stingy":
            shown += " (+0.00); top class kept on 100.0%"
        line = f"| {label} | {shown} | {alone:.2f} | {' | '.join(cells)} |"
        assert line in (tree / "results.md").read_text()
    # the runs behind the cells did learn from what their row says: the stingy teacher's sparse
    # targets changed the kd student's KL term; they keep the argmax, so the hard-label student is
    # the normal row's, bit for bit
    kl = {r: read_metrics(tree / r / "kd" / "metrics.jsonl")[0]["train_kl"] for r in ("normal", "stingy")}
    assert kl["normal"] != kl["stingy"]
    same = [load_checkpoint(tree / r / "hard_label" / "last_model.tar")["state_dict"]
            for r in ("normal", "stingy")]
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
