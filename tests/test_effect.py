"""The paper's claim as a test: experiments/Digits as shipped (seed 0), trained by `reproduce.py
--jobs 2` with the real scripts on the CPU (about 3.5 minutes on 2 cores; --jobs changes no number).

1. The numbers are exactly those README reports for this chain (best test accuracy over 359 test
   images, so one image is 0.28 points): the method table and the engine changed nothing. They
   hold for reproduce.py's default of 1 intra-op thread per stage on an x86-64 CPU like the one
   that made them; another thread count trains differently, bit for bit (--threads 2 gives the
   README's other table).
2. The effect: the nasty teacher is within 1.5 points of the normal one, and the student distilled
   from it is at least 10 points below both the student distilled from the normal teacher and the
   same network trained alone.
"""
import json
import shutil

import pytest

import reproduce
from conftest import ROOT

STAGES = {"teacher": "baseline/preresnet20", "alone": "baseline/cnn",
          "nasty": "kd_nasty_preresnet20/nasty_preresnet20",
          "from_normal": "kd_normal_preresnet20/cnn", "from_nasty": "kd_nasty_preresnet20/cnn"}
README_NUMBERS = {"teacher": 98.89, "alone": 98.33, "nasty": 98.33, "from_normal": 97.49,
                  "from_nasty": 74.93}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Best accuracy per stage of the shipped Digits chain, trained in a copy of the tree."""
    base = tmp_path_factory.mktemp("effect")
    tree = base / "experiments" / "Digits"
    shutil.copytree(ROOT / "experiments" / "Digits", tree,
                    ignore=shutil.ignore_patterns("*.tar", "*.log", "*.jsonl", "events.*", "seed_*",
                                                  "sweep_*", "results.*", "*.png"))
    # reproduce.py gives every stage 1 intra-op thread (--threads), whatever the machine's cores
    # and the number of jobs, so two jobs give the numbers of one, sooner
    reproduce.main([str(tree), "--device", "cpu", "--no-figures", "--jobs", "2"])
    results = json.loads((tree / "results.json").read_text())
    return {role: results["stages"][stage]["best_acc"]["mean"] for role, stage in STAGES.items()}


@pytest.mark.slow
def test_digits_chain_gives_the_numbers_readme_reports(digits):
    assert {role: round(acc, 2) for role, acc in digits.items()} == README_NUMBERS


@pytest.mark.slow
def test_nasty_teacher_keeps_its_accuracy_and_poisons_its_student(digits):
    assert abs(digits["nasty"] - digits["teacher"]) <= 1.5
    assert digits["from_nasty"] <= digits["from_normal"] - 10.0
    assert digits["from_nasty"] <= digits["alone"] - 10.0


def test_readme_reports_these_numbers():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert ("give 98.89 / 98.33 for the teachers and 98.33 alone, 97.49 from the normal and "
            "**74.93** from the nasty teacher") in readme
