"""The project's own promises: CI runs the README's test command; the layout users expect."""
import re

from configs import FOLLOW_UP_PREFIXES, GENERATED_PREFIXES
from conftest import ROOT


def _ci_test_command():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [l for l in lines if l and not l.startswith("#")]
    return commands[-1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Test", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()
    assert block == _ci_test_command() == "python -m pytest -q"


def test_ci_installs_both_requirement_files():
    script = (ROOT / ".ci" / "run").read_text()
    assert "-r requirements.txt -r requirements-dev.txt" in script and "set -euo pipefail" in script


def test_requirements_name_what_the_project_imports():
    names = {re.split(r"[<>=]", l)[0].strip()
             for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip()}
    assert names == {"torch", "torchvision", "numpy", "tqdm", "tensorboardX", "scikit-learn",
                     "matplotlib", "submitit"}  # submitit: reproduce.py --launcher slurm
    # one command installs everything the tests need, the project's requirements included
    assert (ROOT / "requirements-dev.txt").read_text().split() == [
        "-r", "requirements.txt", "pytest", "pytest-xdist"]


EXPERIMENTS = ROOT / "experiments"


def _folders(file):
    """The folders of a params.json below experiments/, its tree first."""
    return file.relative_to(EXPERIMENTS).parts[:-1]


def _is_generated(file):
    return any(part.startswith(GENERATED_PREFIXES) for part in _folders(file)[1:])


def _is_follow_up(file):
    return not _is_generated(file) and any(part.startswith(FOLLOW_UP_PREFIXES)
                                           for part in _folders(file)[1:])


def _original_configs():
    """The original release's 60 files: not under experiments/Digits*, not in a follow-up folder."""
    return sorted(p for p in EXPERIMENTS.rglob("params.json")
                  if not _folders(p)[0].startswith("Digits") and not _is_generated(p)
                  and not _is_follow_up(p))


def test_published_experiments_are_all_present():
    found = [p.relative_to(EXPERIMENTS).parent.as_posix() for p in _original_configs()]
    assert len(found) == 60
    assert {f.split("/")[0] for f in found} == {"CIFAR10", "CIFAR100", "TinyImageNet"}
    assert "CIFAR10/kd_nasty_resnet18/nasty_resnet18" in found


def test_experiments_are_byte_identical_to_the_published_ones_when_the_reference_is_at_hand():
    import pytest
    reference = ROOT.parent / "shared" / "reference" / "original_experiments"
    if not reference.is_dir():
        pytest.skip("../shared/reference is not beside this clone")
    originals = sorted(reference.rglob("params.json"))
    assert sorted(p.relative_to(reference) for p in originals) == \
        [p.relative_to(EXPERIMENTS) for p in _original_configs()]
    for original in originals:
        ours = EXPERIMENTS / original.relative_to(reference)
        assert ours.read_bytes() == original.read_bytes(), ours


STINGY_RATIO = {"cifar10": 0.2, "cifar100": 0.1}  # HowieMa/stingy-teacher's configs


# megvii-research/mdistiller and HobbitLong/RepDistiller on CIFAR-100 for MobileNetV2 and ShuffleNet
# students: SGD, 240 epochs, lr 0.01, x0.1 at epochs 150, 180 and 210, batch 64; and each method's
# own defaults (DKD: alpha 1, beta 8, T 4, warm-up 20; FitNet: hint weight 100; AT: p 2, weight 1000)
THEIR_RECIPE = {"learning_rate": 0.01, "schedule": [150, 180, 210], "gamma": 0.1, "batch_size": 64,
                "num_epochs": 240}
THEIR_SETTINGS = {"dkd": {"temperature": 4, "dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_warmup": 20},
                  "fitnet": {"hint_stage": 1, "hint_weight": 100.0}, "at": {"at_p": 2.0, "at_weight": 1000.0}}


def _check_their_recipe(params, group, file):
    import json
    method, row = group.split("_")[:2]
    values = params.as_dict()
    assert params.method == method and params.teacher_model == "resnet18", file
    assert {k: values[k] for k in THEIR_RECIPE} == THEIR_RECIPE, file
    assert {k: values[k] for k in THEIR_SETTINGS[method]} == THEIR_SETTINGS[method], file
    assert values["ce_weight"] == 1.0, file
    teacher = {"normal": "baseline/resnet18", "stingy": "baseline/resnet18",
               "nasty": "kd_nasty_resnet18/nasty_resnet18"}[row]
    assert params.teacher_resume == f"experiments/CIFAR100/{teacher}/best_model.tar", file
    raw = json.loads(file.read_text())
    assert (raw.get("teacher_output"), raw.get("sparse_ratio")) == (
        ("sparse", 0.1) if row == "stingy" else (None, None)), file


def test_follow_up_configs_load_and_read_a_teacher_of_their_own_tree():
    import json

    from methods import load_params

    follow_ups = sorted(p for p in EXPERIMENTS.rglob("params.json") if _is_follow_up(p))
    groups = {}
    for file in follow_ups:
        tree, group = _folders(file)[:2]
        groups.setdefault(f"{tree}/{group}", []).append(file.parent.name)
    assert groups == {
        "CIFAR10/kd_stingy_resnet18": ["cnn", "preresnet20", "preresnet32", "resnet18"],
        "CIFAR100/kd_stingy_resnet18": ["mobilenetv2", "resnet18", "shufflenetv2"],
        "CIFAR100/kd_stingy_resnet50": ["mobilenetv2", "resnet18", "resnet50"],
        "CIFAR100/kd_stingy_resnext29": ["mobilenetv2", "resnet18", "resnext29", "shufflenetv2"],
        "CIFAR10/skeptical_nasty_resnet18": ["mobilenetv2", "resnet18", "resnet50"],
        "CIFAR100/skeptical_nasty_resnet18": ["mobilenetv2", "resnet18", "resnet50"],
        "CIFAR100/skeptical_nasty_resnet50": ["mobilenetv2", "resnet18", "resnet50"],
        "CIFAR10/datafree_normal_resnet18": ["resnet18"], "CIFAR10/datafree_nasty_resnet18": ["resnet18"],
        **{f"CIFAR100/{method}_{row}_resnet18": ["mobilenetv2", "shufflenetv2"]
           for method, rows in (("dkd", ("normal", "nasty", "stingy")), ("fitnet", ("normal", "nasty")),
                                ("at", ("normal", "nasty"))) for row in rows},
        "CIFAR100/label_smoothing_alone": ["mobilenetv2", "shufflenetv2"],
        "CIFAR100/kd_reverse_sigmoid_resnet18": ["mobilenetv2", "shufflenetv2"],
        "CIFAR100/kd_mad_resnet18": ["mobilenetv2", "shufflenetv2"],
        "CIFAR100/kd_sdb_resnet18": ["mobilenetv2", "sdb_resnet18", "shufflenetv2"],
        "CIFAR100/kd_sdb_key_resnet18": ["mobilenetv2", "shufflenetv2"]}
    for file in follow_ups:
        params = load_params(file.parent)
        tree, group = _folders(file)[:2]
        if group == "label_smoothing_alone":  # the reference: the tree's student recipe, smoothed
            baseline = load_params(EXPERIMENTS / tree / "baseline" / file.parent.name).as_dict()
            assert params.as_dict() == {**baseline, "method": "label_smoothing",
                                        "label_smoothing": 0.1}, file
            continue
        if group.startswith(("dkd_", "fitnet_", "at_")):
            _check_their_recipe(params, group, file)
        if params.method == "sdb":  # the box: their keys, against the tree's normal teacher
            assert params.adversarial_resume == f"experiments/{tree}/baseline/resnet18/best_model.tar"
            assert (params.temperature, params.weight, params.sdb_lambda, params.sdb_eta) == \
                (4, 1.0, 0.9, 0.001), file
            continue
        resume = params.teacher_resume
        # a stage of its own tree: experiments/<tree>/<group>/<net>/best_model.tar, with a config
        assert resume.startswith(f"experiments/{tree}/"), file
        assert resume.endswith("/best_model.tar"), file
        teacher = ROOT / resume
        assert (teacher.parent / "params.json").is_file(), (file, resume)
        # an original stage, but for the box's students, whose teacher is the box (a follow-up stage)
        original = not _is_follow_up(teacher.parent / "params.json")
        assert original or group.startswith("kd_sdb_"), (file, resume)
        teacher_config = json.loads((teacher.parent / "params.json").read_text())
        assert teacher_config["model_name"] == params.teacher_model, file
        assert teacher_config["dataset"] == params.dataset, file
        if group.startswith(("dkd_", "fitnet_", "at_")):
            continue
        if group.startswith("kd_sdb_"):  # the unauthorised student and the key holder's
            assert resume == f"experiments/{tree}/kd_sdb_resnet18/sdb_resnet18/best_model.tar", file
            assert params.teacher_output == ("sdb_key" if "_key_" in group else "logits"), file
            assert (params.temperature, params.alpha) == (20, 0.9), file
        elif group.startswith(("kd_reverse_sigmoid_", "kd_mad_")):
            # the answer-time defences at their authors' settings, on the tree's KD recipe
            assert params.method == "kd" and "adversarial_resume" not in teacher_config, file
            assert (params.temperature, params.alpha) == (20, 0.9), file
            assert params.teacher_output == group[3:-len("_resnet18")], file
            assert (params.reverse_sigmoid_beta, params.reverse_sigmoid_gamma, params.mad_epsilon,
                    params.mad_argmax) == (1.0, 0.1, 0.5, 0), file
        elif group.startswith("kd_stingy_"):
            assert params.method == "kd" and "adversarial_resume" not in teacher_config, file
            assert resume == f"experiments/{tree}/baseline/{params.teacher_model}/best_model.tar"
            assert params.teacher_output == "sparse", file
            assert params.sparse_ratio == STINGY_RATIO[params.dataset], file
            assert (params.temperature, params.alpha) == (20, 0.9), file
        elif group.startswith("datafree_"):
            # DeepInversion's CIFAR-10 settings, from the normal or the nasty teacher of the tree
            assert params.method == "deepinversion", file
            assert ("adversarial_resume" in teacher_config) == group.startswith("datafree_nasty_"), file
            assert (params.synthesis_batch, params.synthesis_iterations, params.synthesis_lr,
                    params.synthesis_bn_weight, params.synthesis_tv_l2, params.synthesis_jitter) == \
                (256, 2000, 0.05, 10.0, 2.5e-5, 2), file
        else:
            # the student distils from a nasty teacher of the same tree
            assert params.method == "skeptical" and "adversarial_resume" in teacher_config, file
            assert params.teacher_output == "logits", file


def test_digits_chain_is_complete_and_points_at_its_own_runs():
    from methods import load_params

    digits = ROOT / "experiments" / "Digits"
    # seed_<s>/ and sweep_<key>/ folders are reproduce.py's generated runs, not configs
    folders = {p.parent.relative_to(digits).as_posix() for p in digits.rglob("params.json")
               if not any(part.startswith(GENERATED_PREFIXES)
                          for part in p.relative_to(digits).parts[:-1])}
    assert folders == {"baseline/preresnet20", "baseline/cnn", "kd_normal_preresnet20/cnn",
                       "kd_nasty_preresnet20/nasty_preresnet20", "kd_nasty_preresnet20/cnn"}
    modes = {"baseline": "scratch", "nasty_preresnet20": "nasty"}
    for folder in folders:
        mode = modes.get(folder.split("/")[0], modes.get(folder.split("/")[-1], "kd"))
        params = load_params(digits / folder, mode)
        assert params.dataset == "digits"
        for key in ("teacher_resume", "adversarial_resume"):
            path = getattr(params, key, None)
            if path is not None:
                target = (ROOT / path).parent.relative_to(digits).as_posix()
                assert path.endswith("/best_model.tar") and target in folders and target != folder
