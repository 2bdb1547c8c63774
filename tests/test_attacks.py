"""Teacher defences (stingy, reverse) and student strategies (hard-label, skeptical) against
hand-computed values, and their runs through train_kd.py."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from configs import TINY, write_config

import methods
import nets
import train_kd
import train_scratch
from methods import params_from_dict
from methods.base import defended_logits
from methods.hard_label import hard_label_loss
from methods.kd import kd_loss
from methods.reverse import reverse_logits
from methods.skeptical import Head, Tap, generic_taps, skeptical_loss, taps_for
from methods.stingy import sparse_logits
from repro.matrix import VERDICT_RULE, verdict
from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError
from utils.training.tracking import read_metrics


def defended(logits, teacher_output, sparse_ratio=1.0):
    """The defence table's answer for these two keys (what a run with them hands out)."""
    return defended_logits(logits, SimpleNamespace(teacher_output=teacher_output,
                                                   sparse_ratio=sparse_ratio))

STUDENT = {**TINY, "teacher_model": "net", "teacher_resume": "t.tar", "temperature": 4, "alpha": 0.9}


def _softmax(values, T=1.0):
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------- defences

def test_sparse_keeps_the_top_k_and_drops_the_rest():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, -1.0, 4.0]])
    inf = float("-inf")
    assert sparse_logits(logits, 2).tolist() == [[3.0, inf, 2.0, inf], [inf, 5.0, inf, 4.0]]
    # int(0.5 * 4) = 2 logits; int(0.3 * 4) = 1
    assert torch.equal(defended(logits, "sparse", 0.5), sparse_logits(logits, 2))
    assert defended(logits, "sparse", 0.3).tolist() == [[3.0, inf, inf, inf], [inf, 5.0, inf, inf]]
    assert defended(logits, "logits") is logits


def test_reverse_keeps_the_top_class_and_reverses_the_other_ranks():
    # ranks of [3, 1, 2, 0]: class 0, 2, 1, 3; the 2nd gets the smallest value, the 3rd the next
    assert reverse_logits(torch.tensor([[3.0, 1.0, 2.0, 0.0]])).tolist() == [[3.0, 1.0, 0.0, 2.0]]
    assert reverse_logits(torch.tensor([[0.0, 9.0, 5.0]])).tolist() == [[5.0, 9.0, 0.0]]
    logits = torch.randn(6, 10)
    assert torch.equal(reverse_logits(logits).argmax(1), logits.argmax(1))
    assert torch.equal(reverse_logits(logits).sort(1).values, logits.sort(1).values)


def test_kd_against_a_stingy_teacher_by_hand():
    student, teacher = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0, 1.0, -3.0]])
    T = 2.0
    terms = kd_loss(student, defended(teacher, "sparse", 0.67), torch.tensor([0]), T, 0.9)
    p = _softmax([2.0, 1.0], T) + [0.0]  # the third logit is gone: probability exactly 0
    q = _softmax([1.0, 0.0, 0.0], T)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0) * T * T
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert math.isfinite(terms["loss"].item())


def test_a_sparse_ratio_that_keeps_nothing_is_one_line():
    with pytest.raises(ConfigError, match=r"sparse_ratio = 0.05 keeps int\(0.05 \* 10\) = 0 of the 10 "
                                          r"logits; give at least 0.1"):
        params_from_dict({**STUDENT, "teacher_output": "sparse", "sparse_ratio": 0.05}, "kd")
    with pytest.raises(ConfigError, match=r"teacher_output = 'sparce' is not a known teacher output "
                                          r"\(did you mean 'sparse'\?\)"):
        params_from_dict({**STUDENT, "teacher_output": "sparce"}, "kd")
    with pytest.raises(ConfigError, match=r"sparse_ratio = 0 must be > 0 and <= 1"):
        params_from_dict({**STUDENT, "teacher_output": "sparse", "sparse_ratio": 0}, "kd")


# ----------------------------------------------------------------------------- student strategies

def test_hard_label_loss_uses_the_teachers_argmax():
    student = torch.tensor([[2.0, 0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0, 5.0]])  # says class 2; the true label is 0
    terms = hard_label_loss(student, teacher, torch.tensor([0]))
    log_z = math.log(math.exp(2.0) + 1.0 + math.exp(1.0))
    assert terms["hard"].item() == pytest.approx(log_z - 1.0, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(log_z - 2.0, rel=1e-6)
    assert terms["loss"] is terms["hard"]


def test_hard_label_keys_have_no_temperature_or_alpha():
    keys = {key.name for key in methods.base.get_method("hard_label").all_keys}
    assert {"teacher_model", "teacher_resume", "teacher_output"} <= keys
    assert not keys & {"temperature", "alpha"}
    config = {k: v for k, v in STUDENT.items() if k not in ("temperature", "alpha")}
    assert params_from_dict({**config, "method": "hard_label"}, "kd").method == "hard_label"


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_skeptical_loss_by_hand():
    final, aux1, aux2 = [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]
    teacher, T, alpha = [3.0, 0.0], 2.0, 0.9
    outputs = [torch.tensor([v]) for v in (final, aux1, aux2)]
    label = torch.tensor([0])

    def ce(logits):
        return -math.log(_softmax(logits)[0])
    for loc in (1, 2):
        terms = skeptical_loss(outputs, torch.tensor([teacher]), label, T, alpha, loc, distill=True)
        kd = _kl(_softmax(teacher, T), _softmax([final, aux1, aux2][loc], T)) * T * T
        self_kl = _kl(_softmax(final, T), _softmax(aux1, T))  # no T^2
        expected = (alpha * kd + (1 - alpha) * ce([final, aux1, aux2][loc]) + 0.3 * self_kl
                    + 0.7 * ce(aux1) + ce(final))
        assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
        assert terms["kl"].item() == pytest.approx(kd, rel=1e-6)
        assert terms["self_kl"].item() == pytest.approx(self_kl, rel=1e-6)
    before = skeptical_loss(outputs, torch.tensor([teacher]), label, T, alpha, 1, distill=False)
    assert before["loss"].item() == pytest.approx(ce(final), rel=1e-6)


def test_self_distillation_trains_both_heads():
    final = torch.tensor([[1.0, 0.0]], requires_grad=True)
    aux = torch.tensor([[0.0, 1.0]], requires_grad=True)
    skeptical_loss([final, aux], torch.tensor([[0.0, 0.0]]), torch.tensor([0]), 4.0, 0.0, 1,
                   True)["self_kl"].backward()
    assert final.grad.abs().sum() > 0 and aux.grad.abs().sum() > 0  # the target side is not detached


def _shapes(head):
    return [tuple(v.shape) for k, v in head.state_dict().items() if not k.endswith("num_batches_tracked")]


def _sepconv(cin, cout):
    return [(cin, 1, 3, 3), (cin, cin, 1, 1), (cin,), (cin,), (cin,), (cin,),
            (cin, 1, 3, 3), (cout, cin, 1, 1), (cout,), (cout,), (cout,), (cout,)]


def test_resnet18_heads_are_the_authors():
    shapes = nets.stage_shapes("resnet18", 10, 32)
    taps = taps_for("resnet18", shapes)
    assert taps == [Tap(0, ((128, 2), (256, 2), (512, 2)), 2, 0), Tap(1, ((256, 2), (512, 2)), 2, 0),
                    Tap(2, ((512, 2),), 2, 0)]
    # their attention1 (SepConv 64->64, BN) then scala1 (SepConv 64->128->256->512) and fc1
    head = Head(shapes[0], taps[0], 10)
    assert _shapes(head) == (_sepconv(64, 64) + [(64,)] * 4 + _sepconv(64, 128) + _sepconv(128, 256)
                             + _sepconv(256, 512) + [(10, 512), (10,)])
    assert head(torch.zeros(2, *shapes[0])).shape == (2, 10)


def test_resnet50_heads_are_the_authors():
    shapes = nets.stage_shapes("resnet50", 100, 32)
    # their scala1..3 with Bottleneck.expansion 4: 256 -> 512 -> 1024 -> 2048, stride 2 each
    assert taps_for("resnet50", shapes) == [
        Tap(0, ((512, 2), (1024, 2), (2048, 2)), 2, 0), Tap(1, ((1024, 2), (2048, 2)), 2, 0),
        Tap(2, ((2048, 2),), 2, 0)]


def test_mobilenetv2_heads_are_the_authors():
    shapes = nets.stage_shapes("mobilenetv2", 100, 32)
    taps = taps_for("mobilenetv2", shapes)
    assert [shapes[t.stage] for t in taps] == [(24, 17, 17), (64, 5, 5), (160, 5, 5)]
    head = Head(shapes[taps[1].stage], taps[1], 100)
    assert _shapes(head) == (_sepconv(64, 64) + [(64,)] * 4 + _sepconv(64, 160) + _sepconv(160, 320)
                             + _sepconv(320, 640) + _sepconv(640, 1280) + [(100, 1280), (100,)])
    for tap in taps:
        assert Head(shapes[tap.stage], tap, 100)(torch.zeros(2, *shapes[tap.stage])).shape == (2, 100)


@pytest.mark.parametrize("name", ["net", "preresnet20", "resnext29", "densenet121", "shufflenetv2",
                                  "resnet50"])
def test_every_convolutional_family_gets_heads(name):
    options = {"num_channels": 4, "dropout_rate": 0.0} if name == "net" else {}
    shapes = nets.stage_shapes(name, 10, 32, **options)
    taps = generic_taps(shapes)
    assert len(taps) == len(shapes) - 1 and taps[-1].path[-1][0] == shapes[-1][0]
    for tap in taps:
        assert Head(shapes[tap.stage], tap, 10)(torch.zeros(2, *shapes[tap.stage])).shape == (2, 10)


def test_skeptical_refuses_an_mlp_and_a_head_that_does_not_exist():
    skeptical = {**STUDENT, "method": "skeptical"}
    with pytest.raises(ConfigError, match="needs a convolutional student"):
        params_from_dict({**skeptical, "model_name": "mlp"}, "kd")
    with pytest.raises(ConfigError, match=r"loc = 3 must be <= 2: net has 2 auxiliary heads"):
        params_from_dict({**skeptical, "loc": 3}, "kd")


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = write_config(tmp_path_factory.mktemp("teacher") / "teacher", num_channels=8,
                          batch_size=256)
    train_scratch.main(["--save_path", str(folder)])
    return folder / "best_model.tar"


def _student(tmp_path, teacher, **values):
    folder = write_config(tmp_path / "student", teacher_model="net", teacher_resume=str(teacher),
                          temperature=4, alpha=0.9, batch_size=256, **values)
    config = json.loads((folder / "params.json").read_text())
    if config.get("method") == "hard_label":
        del config["temperature"], config["alpha"]
        (folder / "params.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_students_of_every_strategy_train_and_log_their_terms(tmp_path, teacher):
    expected = {"kd": ["train_ce", "train_kl", "train_loss"],
                "hard_label": ["train_ce", "train_hard", "train_loss"],
                "skeptical": ["train_ce", "train_ce_aux", "train_ce_loc", "train_kl", "train_loss",
                              "train_self_kl"]}
    for method, terms in expected.items():
        folder = _student(tmp_path / method, teacher, method=method, num_channels=8,
                          teacher_output="sparse", sparse_ratio=0.3)
        train_kd.main(["--save_path", str(folder)])
        row = read_metrics(folder / "metrics.jsonl")[-1]
        assert sorted(k for k in row if k.startswith("train_") and k != "train_acc") == terms
        checkpoint = load_checkpoint(folder / "best_model.tar")
        plain = nets.build_model("net", 10, num_channels=8, dropout_rate=0.0).state_dict()
        assert list(checkpoint["state_dict"]) == list(plain)  # loads as a teacher
        assert ("objective_state_dict" in checkpoint) == (method == "skeptical")
        assert checkpoint["params"]["teacher_output"] == "sparse"


# ----------------------------------------------------------------------------- the defence x attack table

def _attacks_tree(root, base):
    from configs import KD, NASTY
    ref = {"normal": "z_base/teacher", "nasty": "b_nasty/teacher"}
    write_config(root / "z_base" / "teacher")
    write_config(root / "z_base" / "student")
    write_config(root / "b_nasty" / "teacher", **NASTY,
                 adversarial_resume=(root / "z_base/teacher/best_model.tar").relative_to(base).as_posix())
    students = {"normal/kd": ("kd", "normal", {}), "normal/skeptical": ("skeptical", "normal", {}),
                "nasty/kd": ("kd", "nasty", {}), "nasty/skeptical": ("skeptical", "nasty", {}),
                "stingy/kd": ("kd", "normal", {"teacher_output": "sparse", "sparse_ratio": 0.2}),
                "reverse/hard_label": ("hard_label", "normal", {"teacher_output": "reverse"}),
                "stingy/dkd": ("dkd", "normal", {"teacher_output": "sparse", "sparse_ratio": 0.2}),
                "normal/fitnet": ("fitnet", "normal", {}), "nasty/at": ("at", "nasty", {})}
    write_config(root / "z_base" / "student_ls", method="label_smoothing")
    for folder, (method, teacher, extra) in students.items():
        values = {**KD, "method": method, **extra,
                  "teacher_resume": (root / ref[teacher] / "best_model.tar").relative_to(base).as_posix()}
        if method in ("hard_label", "fitnet", "at"):
            values = {k: v for k, v in values.items() if k not in ("temperature", "alpha")}
        if method == "dkd":
            del values["alpha"]
        write_config(root / folder, **values)
    return root


ATTACK_ACCURACY = {"z_base/teacher": 95.0, "z_base/student": 90.0, "b_nasty/teacher": 94.0,
                   "normal/kd": 92.0, "normal/skeptical": 93.0, "nasty/kd": 60.0,
                   "nasty/skeptical": 85.0, "stingy/kd": 70.0, "reverse/hard_label": 89.0,
                   "z_base/student_ls": 91.0, "stingy/dkd": 80.0, "normal/fitnet": 93.0,
                   "nasty/at": 88.0}


def test_the_matrix_has_a_row_per_defence_and_a_column_per_strategy(tmp_path):
    from configs import FakeRunner, quiet

    from repro.pipeline import make_plan
    from repro.report import collect, render
    from repro.runner import execute
    plan = make_plan(_attacks_tree(tmp_path / "tree", tmp_path), seeds=[0, 1])
    outcomes = execute(plan, FakeRunner(lambda r: ATTACK_ACCURACY[r.stage.name] + 2 * r.seed), quiet())
    results = collect(plan, outcomes)
    assert len(results["matrices"]) == 1  # beside the paper's table of the plain KD students
    assert [s["label"] for s in results["groups"][0]["students"]] == ["net (4 ch.)"]
    text = render(results)
    assert ("| Teacher defence | Teacher accuracy | alone | label smoothing (0.1) | kd [outputs] | "
            "dkd [outputs] | skeptical [outputs] | hard_label [outputs] | fitnet [weights] | "
            "attention transfer [weights] |") in text
    fixed = "91.00 ± 1.41 | 92.00 ± 1.41 (+1.00)"  # alone; the reference and its gain on alone
    no, holds = "**does not hold**", "**holds**"
    # the undefended teacher's row: the numbers, no verdict
    assert ("| normal | 96.00 ± 1.41 | 91.00 ± 1.41 | 92.00 ± 1.41 (+1.00) | 93.00 ± 1.41 (+2.00 / +1.00) "
            "| — | 94.00 ± 1.41 (+3.00 / +2.00) | — | 94.00 ± 1.41 (+3.00 / +2.00) | — |") in text
    # 89 < 92 - (1.41 + 1.41): the nasty teacher holds against attention transfer, just
    assert (f"| nasty | 95.00 ± 1.41 (-1.00) | {fixed} | 61.00 ± 1.41 (-30.00 / -31.00) {holds} | — | "
            f"86.00 ± 1.41 (-5.00 / -6.00) {holds} | — | — | 89.00 ± 1.41 (-2.00 / -3.00) {holds} |"
            ) in text
    # an output defence and a strategy that reads features: not applied, and said so
    assert (f"| stingy (sparse 0.2) | 96.00 ± 1.41 | {fixed} | 71.00 ± 1.41 (-20.00 / -21.00) {holds} "
            f"| 81.00 ± 1.41 (-10.00 / -11.00) {holds} | — | — | n/a: reads weights | "
            f"n/a: reads weights |") in text
    assert (f"| reverse | 96.00 ± 1.41 | {fixed} | — | — | — | 90.00 ± 1.41 (-1.00 / -2.00) {no} | "
            f"n/a: reads weights | n/a: reads weights |") in text
    assert f"Verdict: {VERDICT_RULE}." in text
    record = results["matrices"][0]
    assert record["verdict_rule"] == VERDICT_RULE and record["reference"]["stage"] == "z_base/student_ls"
    assert record["alone"]["stage"] == "z_base/student"  # the reference is not "alone"
    assert record["access"] == {"kd": "outputs", "dkd": "outputs", "skeptical": "outputs",
                                "hard_label": "outputs", "fitnet": "weights",
                                "attention transfer": "weights"}
    assert record["rows"][0]["cells"]["kd"]["verdict"] is None
    nasty_at = record["rows"][1]["cells"]["attention transfer"]
    assert nasty_at["verdict"] == "holds" and nasty_at["delta_reference"] == pytest.approx(-3.0)
    assert record["rows"][2]["cells"]["fitnet"] == {"stage": None, "acc": None, "delta": None,
                                                    "applies": False}
    rows = [row["defence"] for row in results["matrices"][0]["rows"]]
    assert rows == ["normal", "nasty", "stingy (sparse 0.2)", "reverse"]


def test_the_heat_map_is_drawn(tmp_path):
    from configs import FakeRunner, quiet
    from PIL import Image

    from repro import figures
    from repro.pipeline import make_plan
    from repro.report import collect, render
    from repro.runner import execute
    plan = make_plan(_attacks_tree(tmp_path / "tree", tmp_path))
    results = collect(plan, execute(plan, FakeRunner(lambda r: ATTACK_ACCURACY[r.stage.name]), quiet()))
    figures.add_figures(plan, results)
    assert results["matrices"][0]["figures"] == ["attacks_net_net4ch.png"]
    with Image.open(tmp_path / "tree" / "attacks_net_net4ch.png") as image:
        assert image.size[0] > 200
    assert "![attacks_net_net4ch](attacks_net_net4ch.png)" in render(results)


def test_a_defence_key_means_one_thing():
    from methods.base import Defence, register_defence
    from methods.stingy import SPARSE_RATIO
    other = SPARSE_RATIO._replace(default=0.5)
    with pytest.raises(ValueError, match="key 'sparse_ratio' of defence 'twin' differs from defence "
                                         "'sparse''s; share one Key row"):
        register_defence(Defence("twin", "", lambda logits, params: logits, keys=(other,)))


def test_a_verdict_needs_two_seeds_on_each_side():
    def entry(*values):
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
        return {"acc": {"mean": mean, "std": std, "n": len(values), "values": list(values)}}
    reference = entry(90.0, 92.0)               # 91 ± 1.41
    assert verdict(entry(86.0, 88.0), reference) == "holds"          # 87 < 91 - 2.83
    assert verdict(entry(89.0, 90.0), reference) == "does not hold"  # 89.5 > 91 - 2.12
    assert verdict(entry(80.0), reference) is None                   # one seed: no spread
    assert verdict(entry(80.0, 81.0), None) is None                  # no reference in the tree


def test_a_sweep_of_a_defence_key_renders_each_values_matrix(tmp_path):
    from configs import FakeRunner, quiet

    from repro.pipeline import make_plan
    from repro.runner import execute
    from repro.sweep import collect_sweep, render_sweep, sweep_plan
    plan = sweep_plan(make_plan(_attacks_tree(tmp_path / "tree", tmp_path), seeds=[0, 1]),
                      "sparse_ratio=0.2,0.5")
    outcomes = execute(plan, FakeRunner(lambda r: ATTACK_ACCURACY[r.stage.name] + 2 * r.seed
                                        + (5 if r.variant == "sparse_ratio=0.5" else 0)), quiet())
    text = render_sweep(collect_sweep(plan, outcomes))
    heading = "#### Defences × student strategies: teacher net (`z_base/teacher`), student net (4 ch.)"
    assert text.count(heading) == 2  # one matrix per value, under its own heading
    first, second = text.split("### sparse_ratio=0.5")
    assert "| stingy (sparse 0.2) | 96.00 ± 1.41 | " in first.split("### sparse_ratio=0.2")[1]
    # the swept row's students learn 5 points more at 0.5 in this fake; the other rows are shared
    assert ("| stingy (sparse 0.5) | 96.00 ± 1.41 | 91.00 ± 1.41 | 92.00 ± 1.41 (+1.00) | "
            "76.00 ± 1.41 (-15.00 / -16.00) **holds** |") in second
    assert "| reverse | 96.00 ± 1.41 | 91.00 ± 1.41 | 92.00 ± 1.41 (+1.00) | — |" in second
