"""The paper's claim as a test: experiments/Digits as shipped (seed 0), trained by `reproduce.py
--jobs 2` with the real scripts on the CPU (about 4 to 9 minutes on 2 cores; --jobs changes no number).

1. The effect, on every machine: the nasty teacher is within 1.5 points of the normal one, and the
   student distilled from it is at least 10 points below both the student distilled from the
   normal teacher and the same network trained alone.
2. The exact numbers, where the project has measured them: the same seed and config give other
   floats, and after 15 epochs other accuracies, on another PyTorch build, CPU instruction set
   (AVX2 and AVX-512 kernels sum in other orders), GPU model or thread count. Every run records
   that numerics fingerprint (utils/base/provenance.py); MEASURED holds the seed-0 numbers per
   fingerprint, and on a machine whose fingerprint is not there the test says so and checks only
   the effect. Best test accuracy over 359 test images: one image is 0.28 points.
"""
import hashlib
import json
import shutil

import pytest
import torch
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


# sha256 (first 16 hex digits) of each stage's best_model.tar weights, seed 0, per fingerprint: the
# same code on the same machine gives the same weights bit for bit, so a refactoring that changes
# any number of the chain fails here (these were made by the code before issue 22's restructuring)
MEASURED_WEIGHTS = {
    "torch 2.14.1+cu130, cpu AVX2, 1 thread": {
        "teacher": "f5a1933aaf6d8e02", "alone": "4d00d4d97021f22f", "nasty": "f70661e7090902b8",
        "from_normal": "59a250920ed567c7", "from_nasty": "41525f50f998b50b"},
}


def weights_digest(path):
    """sha256 of a checkpoint's state_dict: every tensor's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in torch.load(path, map_location="cpu", weights_only=True)["state_dict"].items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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
    weights = {role: weights_digest(tree / stage / "best_model.tar") for role, stage in STAGES.items()}
    return accuracy, list(results["numerics"]), weights


@pytest.mark.slow
def test_nasty_teacher_keeps_its_accuracy_and_poisons_its_student(digits):
    accuracy, _, _ = digits
    assert abs(accuracy["nasty"] - accuracy["teacher"]) <= 1.5
    assert accuracy["from_nasty"] <= accuracy["from_normal"] - 10.0
    assert accuracy["from_nasty"] <= accuracy["alone"] - 10.0


@pytest.mark.slow
def test_digits_chain_gives_the_numbers_measured_for_this_fingerprint(digits):
    accuracy, fingerprints, _ = digits
    assert len(fingerprints) == 1, f"the runs were trained under several fingerprints: {fingerprints}"
    expected = MEASURED.get(fingerprints[0])
    if expected is None:
        pytest.skip(f"no measured seed-0 numbers for this machine ({fingerprints[0]}); the project "
                    f"has them for: {'; '.join(MEASURED)}. The effect was checked. To add this "
                    f"machine: {json.dumps({r: round(a, 2) for r, a in accuracy.items()})}")
    assert {role: round(acc, 2) for role, acc in accuracy.items()} == expected


@pytest.mark.slow
def test_digits_chain_gives_the_weights_measured_for_this_fingerprint(digits):
    _, fingerprints, weights = digits
    expected = MEASURED_WEIGHTS.get(fingerprints[0]) if len(fingerprints) == 1 else None
    if expected is None:
        pytest.skip(f"no measured weights for this machine ({fingerprints}); to add it: "
                    f"{json.dumps(weights)}")
    assert weights == expected


def test_the_weight_digest_sees_one_changed_bit(tmp_path):
    state = {"w": torch.arange(4.0), "b": torch.zeros(2)}
    torch.save({"state_dict": state}, tmp_path / "a.tar")
    state["w"][3] = torch.nextafter(state["w"][3], torch.tensor(9.0))
    torch.save({"state_dict": state}, tmp_path / "b.tar")
    assert weights_digest(tmp_path / "a.tar") != weights_digest(tmp_path / "b.tar")


def test_readme_reports_the_measured_numbers_with_their_fingerprints():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for fingerprint, n in MEASURED.items():
        row = (f"| `{fingerprint}` | {n['teacher']:.2f} / {n['nasty']:.2f} | {n['alone']:.2f} | "
               f"{n['from_normal']:.2f} | **{n['from_nasty']:.2f}** |")
        assert row in readme, row
