"""The project's own promises: CI runs the README's test command; the layout users expect."""
import re

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
                     "matplotlib"}
    assert (ROOT / "requirements-dev.txt").read_text().split() == ["pytest"]


def test_published_experiments_are_all_present():
    found = sorted(p.relative_to(ROOT / "experiments").parent.as_posix()
                   for p in (ROOT / "experiments").rglob("params.json")
                   if "Digits" not in p.parts and not p.parent.name.startswith("seed_"))
    assert len(found) == 60
    assert {f.split("/")[0] for f in found} == {"CIFAR10", "CIFAR100", "TinyImageNet"}
    assert "CIFAR10/kd_nasty_resnet18/nasty_resnet18" in found


def test_experiments_are_byte_identical_to_the_published_ones_when_the_reference_is_at_hand():
    import pytest
    reference = ROOT.parent / "shared" / "reference" / "original_experiments"
    if not reference.is_dir():
        pytest.skip("../shared/reference is not beside this clone")
    for original in reference.rglob("params.json"):
        ours = ROOT / "experiments" / original.relative_to(reference)
        assert ours.read_bytes() == original.read_bytes(), ours


def test_digits_chain_is_complete_and_points_at_its_own_runs():
    from utils.params import load_params

    digits = ROOT / "experiments" / "Digits"
    # seed_<s>/ folders are reproduce.py's per-seed runs, not configs
    folders = {p.parent.relative_to(digits).as_posix() for p in digits.rglob("params.json")
               if not p.parent.name.startswith("seed_")}
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
