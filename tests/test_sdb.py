"""The Safe Distillation Box: its loss against hand-computed values, the key in the checkpoint, the
key holder's keyed queries on real runs, and the matrix rows of both of its students."""
import json
import math

import pytest
import torch
from configs import KD, NASTY, TINY, FakeRunner, quiet, write_config

import methods
import methods.kd
import nets
import train_kd
import train_nasty
import train_scratch
from methods import params_from_dict
from methods.sdb import keyed_queries, make_key, sdb_loss
from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError
from utils.data.digits import DIGITS_MEAN, DIGITS_STD
from utils.training.tracking import read_metrics, write_teacher_record

SDB = {"method": "sdb", "adversarial_model": "net", "temperature": 4, "weight": 1.0}


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_keyed_queries_mix_the_image_with_the_key():
    images, key = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[10.0, 20.0]]])
    mixed = keyed_queries(images, key, 0.9)[0, 0, 0].tolist()
    assert mixed == pytest.approx([0.9 * 1 + 0.1 * 10, 0.9 * 2 + 0.1 * 20])


def test_sdb_loss_by_hand():
    # f(x) = (1, 0), f(x~) = (0, 1), a(x) = (2, 0), r(x) = (0, -1), label 0, T 2, weight 0.5, eta 0.1
    logits, keyed = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]], requires_grad=True)
    adversarial, random = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, -1.0]])
    terms = sdb_loss(logits, keyed, adversarial, random, torch.tensor([0]), T=2.0, weight=0.5, eta=0.1)
    ce = 2 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))
    nasty = 4 * _kl(_softmax([0.5, 0.0]), _softmax([1.0, 0.0]))
    apart = _kl(_softmax([1.0, 0.0]), _softmax([0.0, 1.0]))
    maintain = sum((a - b) ** 2 for a, b in zip(_softmax([1.0, 0.0]), _softmax([0.0, 0.5])))
    random_term = 0.01 * ((2 - 0) ** 2 + (0 - 1) ** 2) - ((0 - 0) ** 2 + (0 - 1) ** 2)  # relus
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["disturb"].item() == pytest.approx(nasty - apart, rel=1e-6)
    assert terms["maintain"].item() == pytest.approx(maintain, rel=1e-6)
    assert terms["random"].item() == pytest.approx(random_term, rel=1e-6)
    total = ce - 0.5 * (nasty - apart) + maintain - 0.1 * random_term
    assert terms["loss"].item() == pytest.approx(total, rel=1e-6)
    # the keyed answers are a constant in the "apart" KL (their .detach()): the disturb term gives
    # the plain answers a gradient and the keyed ones none
    plain = logits.clone().requires_grad_()
    disturb = sdb_loss(plain, keyed, adversarial, random, torch.tensor([0]), T=2.0, weight=0.5,
                       eta=0.1)["disturb"]
    grads = torch.autograd.grad(disturb, [plain, keyed], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None


def test_the_squared_errors_are_sums_over_the_batch_as_pytorch_1_4_computed_theirs():
    zeros, ones = torch.zeros(3, 2), torch.ones(3, 2)
    terms = sdb_loss(zeros, ones, zeros, zeros, torch.zeros(3, dtype=torch.long), T=1.0, weight=0.0, eta=1.0)
    assert terms["random"].item() == pytest.approx(0.01 * 6 - 6)  # six elements, summed


def test_the_key_is_a_fixed_normalised_noise_image_of_its_seed():
    params = params_from_dict({**TINY, **SDB, "adversarial_resume": "a.tar"}, "nasty")
    key = make_key(params, 0)
    assert key.shape == (3, 32, 32) and torch.equal(key, make_key(params, 0))
    assert not torch.equal(key, make_key(params, 1))
    mean, std = torch.tensor(DIGITS_MEAN).view(3, 1, 1), torch.tensor(DIGITS_STD).view(3, 1, 1)
    pixels = (key * std + mean) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() >= 0 and pixels.max() <= 254.01
    assert (params.sdb_lambda, params.sdb_eta, params.sdb_key_seed) == (0.9, 0.001, 0)
    with pytest.raises(ConfigError, match=r"sdb_lambda = 1 must be >= 0 and < 1"):
        params_from_dict({**TINY, **SDB, "adversarial_resume": "a.tar", "sdb_lambda": 1}, "nasty")


def test_a_data_set_that_measures_its_normalisation_gets_no_key(monkeypatch):
    from utils.data.registry import DATASETS
    params = params_from_dict({**TINY, **SDB, "adversarial_resume": "a.tar"}, "nasty")
    monkeypatch.setitem(DATASETS, "digits", DATASETS["digits"]._replace(mean=None))
    with pytest.raises(ConfigError, match=r"^<params>: method 'sdb' needs a data set with fixed "
                                          r"normalisation .*'digits' measures its mean and std"):
        make_key(params, 0)


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A normal `net` teacher and the Safe Distillation Box trained against it, one epoch each."""
    root = tmp_path_factory.mktemp("sdb")
    normal = write_config(root / "normal")
    train_scratch.main(["--save_path", str(normal)])
    sdb = write_config(root / "sdb", **SDB, adversarial_resume=str(normal / "best_model.tar"))
    train_nasty.main(["--save_path", str(sdb)])
    return normal / "best_model.tar", sdb


@pytest.mark.slow
def test_the_box_trains_with_its_terms_and_its_checkpoint_holds_the_key(box):
    _, sdb = box
    checkpoint = load_checkpoint(sdb / "last_model.tar")
    params = params_from_dict({**TINY, **SDB, "adversarial_resume": "a.tar"}, "nasty")
    assert torch.equal(checkpoint["objective_state_dict"]["key"], make_key(params, 0))
    assert checkpoint["objective_state_dict"]["key_share"].item() == pytest.approx(0.9)
    assert "key" not in checkpoint["state_dict"]  # the network's own state_dict stays the original's
    row = read_metrics(sdb / "metrics.jsonl")[0]
    total = row["train_ce"] - row["train_disturb"] + row["train_maintain"] - 0.001 * row["train_random"]
    assert row["train_loss"] == pytest.approx(total, rel=1e-4)
    assert "- Train adversarial loss 2 :" in (sdb / "training.log").read_text()


@pytest.mark.slow
def test_the_key_holder_distils_from_the_answers_to_keyed_queries(box, tmp_path, monkeypatch):
    normal, sdb = box
    targets, images_seen = [], []
    real = methods.kd.soft_kl
    monkeypatch.setattr(methods.kd, "soft_kl", lambda target, logits, T: targets.append(target) or
                        real(target, logits, T))
    student = write_config(tmp_path / "holder", {**TINY, **KD}, teacher_resume=str(sdb / "best_model.tar"),
                           teacher_output="sdb_key", batch_size=512)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: images_seen.append(args[1])
        if isinstance(module, methods.base.Objective) else None)
    try:
        train_kd.main(["--save_path", str(student)])
    finally:
        hook.remove()
    network = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0)
    network.load_state_dict(load_checkpoint(sdb / "best_model.tar")["state_dict"])
    key = load_checkpoint(sdb / "best_model.tar")["objective_state_dict"]["key"]
    with torch.no_grad():
        expected = network.eval()(0.9 * images_seen[0] + 0.1 * key)
        plain = network(images_seen[0])
    torch.testing.assert_close(targets[0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(targets[0], plain)
    record = json.loads((student / "teacher.json").read_text())
    assert record["defence"] == "sdb_key" and "answered_acc" in record
    assert "Teacher through its defence (key holder)" in (student / "training.log").read_text()
    # a teacher that is no box has no key: one line, before training
    other = write_config(tmp_path / "other", {**TINY, **KD}, teacher_resume=str(normal),
                         teacher_output="sdb_key")
    with pytest.raises(ConfigError, match=r"teacher_output 'sdb_key' needs a Safe Distillation Box "
                                          r"teacher \(method 'sdb'\): .* holds no key"):
        train_kd.main(["--save_path", str(other)])
    assert not (other / "last_model.tar").exists()


# ----------------------------------------------------------------------------- the matrix

def test_both_students_of_the_box_have_their_rows(tmp_path):
    """An unauthorised student (plain answers) and the key holder's (keyed answers) are two rows
    of the matrix, and the key holder's row shows the teacher as it answers keyed queries."""
    from repro.pipeline import make_plan
    from repro.report import collect, render
    from repro.runner import execute
    root = tmp_path / "tree"

    def ref(stage):
        return str(root / stage / "best_model.tar")
    write_config(root / "z_base" / "teacher", seed=1)
    write_config(root / "z_base" / "student")
    write_config(root / "b_sdb" / "teacher", **SDB, adversarial_resume=ref("z_base/teacher"))
    write_config(root / "b_nasty" / "teacher", **NASTY, adversarial_resume=ref("z_base/teacher"))
    write_config(root / "normal" / "kd", **KD, teacher_resume=ref("z_base/teacher"))
    write_config(root / "nasty" / "kd", **KD, teacher_resume=ref("b_nasty/teacher"))
    write_config(root / "sdb" / "kd", **KD, teacher_resume=ref("b_sdb/teacher"))
    write_config(root / "sdb_key" / "kd", **KD, teacher_resume=ref("b_sdb/teacher"), teacher_output="sdb_key")
    write_config(root / "mad" / "kd", **KD, teacher_resume=ref("z_base/teacher"), teacher_output="mad")
    accuracy = {"z_base/teacher": 96, "z_base/student": 91, "b_sdb/teacher": 95, "b_nasty/teacher": 94,
                "normal/kd": 93, "nasty/kd": 60, "sdb/kd": 50, "sdb_key/kd": 92, "mad/kd": 80}
    class Runner(FakeRunner):  # a student of a defence measures its teacher through it
        def __call__(self, run, status, progress):
            outcome = super().__call__(run, status, progress)
            answered = {"sdb_key/kd": (94.5, 99.0), "mad/kd": (95.0, 98.0)}.get(run.stage.name)
            if answered:
                write_teacher_record(run.folder, {"teacher_acc": 95.0, "answered_acc": answered[0],
                                                  "top_class_kept": answered[1]})
            return outcome
    runner = Runner(lambda run: accuracy[run.stage.name])
    plan = make_plan(root)
    results = collect(plan, execute(plan, runner, quiet()))
    matrix = results["matrices"][0]
    assert [row["defence"] for row in matrix["rows"]] == ["normal", "nasty", "SDB", "SDB, key holder",
                                                          "MAD (eps 0.5)"]
    text = render(results)
    assert "| SDB | 95.00 (-1.00) | 91.00 | 50.00 (-41.00) |" in text
    assert "| SDB, key holder | 94.50 (-1.50); top class kept on 99.0% | 91.00 | 92.00 (+1.00) |" in text
    assert "| MAD (eps 0.5) | 95.00 (-1.00); top class kept on 98.0% | 91.00 | 80.00 (-11.00) |" in text
