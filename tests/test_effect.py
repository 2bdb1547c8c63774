"""The paper's claim as a test: experiments/Digits as shipped (seed 0), trained by `reproduce.py
--jobs 2` with the real scripts on the CPU (about 4 to 9 minutes on 2 cores; --jobs changes no number).

1. The effect, on every machine: the nasty teacher is within 1.5 points of the normal one, and the
   student distilled from it is at least 10 points below both the student distilled from the
   normal teacher and the same network trained alone.
2. The exact numbers, where the project has measured them: the same seed and config give other
   floats, and after 15 epochs other accuracies, on another PyTorch build, CPU instruction set
   (AVX2 and AVX-512 kernels sum in other orders), GPU model or thread count. Every run records
   that numerics fingerprint (utils/provenance.py); MEASURED holds the seed-0 numbers per
   fingerprint, and on a machine whose fingerprint is not there the test says so and checks only
   the effect. Best test accuracy over 359 test images: one image is 0.28 points.
"""
import json
import shutil

import pytest
from conftest import ROOT

import reproduce

STAGES = {"teacher": "baseline/preresnet20", "alone": "baseline/cnn",
          "nasty": "kd_nasty_preresnet20/nasty_preresnet20",
          "from_normal": "kd_normal_preresnet20/cnn", "from_nasty": "kd_nasty_preresnet20/cnn"}
# seed 0, 1 intra-op thread per stage (reproduce.py's default); README's tables name the same
MEASURED = {
    # recorded before fingerprints existed, on a 2-core AMD EPYC with AVX-512 (the torch build
    # that pip resolves from requirements.txt here)
    "torch 2.14.1+cu130, cpu AVX512, 1 thread": {
        "teacher": 98.89, "alone": 98.33, "nasty": 98.33, "from_normal": 97.49, "from_nasty": 74.93},
    # this project's CI machine since 2026-12: 2 cores with AVX2
    "torch 2.14.1+cu130, cpu AVX2, 1 thread": {
        "teacher": 98.89, "alone": 98.05, "nasty": 97.77, "from_normal": 96.66, "from_nasty": 84.12},
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Best accuracy per stage of the shipped Digits chain, trained in a copy of the tree, and
    the fingerprint(s) its runs were trained under."""
    base = tmp_path_factory.mktemp("effect")
    tree = base / "experiments" / "Digits"
    shutil.copytree(ROOT / "experiments" / "Digits", tree,
                    ignore=shutil.ignore_patterns("*.tar", "*.log", "*.jsonl", "events.*", "seed_*",
                                                  "sweep_*", "results.*", "*.png"))
    # reproduce.py gives every stage 1 intra-op thread (--threads), whatever the machine's cores
    # and the number of jobs, so two jobs give the numbers of one, sooner
    reproduce.main([str(tree), "--device", "cpu", "--no-figures", "--jobs", "2"])
    results = json.loads((tree / "results.json").read_text())
    accuracy = {role: results["stages"][stage]["best_acc"]["mean"] for role, stage in STAGES.items()}
    return accuracy, list(results["numerics"])


@pytest.mark.slow
def test_nasty_teacher_keeps_its_accuracy_and_poisons_its_student(digits):
    accuracy, _ = digits
    assert abs(accuracy["nasty"] - accuracy["teacher"]) <= 1.5
    assert accuracy["from_nasty"] <= accuracy["from_normal"] - 10.0
    assert accuracy["from_nasty"] <= accuracy["alone"] - 10.0


@pytest.mark.slow
def test_digits_chain_gives_the_numbers_measured_for_this_fingerprint(digits):
    accuracy, fingerprints = digits
    assert len(fingerprints) == 1, f"the runs were trained under several fingerprints: {fingerprints}"
    expected = MEASURED.get(fingerprints[0])
    if expected is None:
        pytest.skip(f"no measured seed-0 numbers for this machine ({fingerprints[0]}); the project "
                    f"has them for: {'; '.join(MEASURED)}. The effect was checked. To add this "
                    f"machine: {json.dumps({r: round(a, 2) for r, a in accuracy.items()})}")
    assert {role: round(acc, 2) for role, acc in accuracy.items()} == expected


def test_readme_reports_the_measured_numbers_with_their_fingerprints():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for fingerprint, n in MEASURED.items():
        row = (f"| `{fingerprint}` | {n['teacher']:.2f} / {n['nasty']:.2f} | {n['alone']:.2f} | "
               f"{n['from_normal']:.2f} | **{n['from_nasty']:.2f}** |")
        assert row in readme, row
