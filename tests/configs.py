"""Configs and helpers the tests share: a tiny digits run, the paper's five stages as a tree, fake
training for plan tests.

    from configs import TINY, TINY8, write_config, paper_tree
    folder = write_config(tmp_path / "run", num_epochs=2)       # TINY with changes, as params.json
    folder = write_config(tmp_path / "run", TINY8, num_epochs=3)  # another base, with changes

Test files state only how their runs differ from TINY: a variant here when several files share it,
else a dict of their own built from TINY (`{**TINY, "batch_size": 256}`).
"""
import json

from repro.progress import Progress
from repro.runner import Outcome
from utils.base.checkpoint import save_checkpoint

# folders of the follow-up papers' configs below a tree of experiments/ (experiments/FOLLOWUPS.md),
# beside the original release's 60 files; and the per-seed and per-sweep runs reproduce.py writes
FOLLOW_UP_PREFIXES = ("kd_stingy_", "skeptical_", "datafree_", "dkd_", "fitnet_", "at_",
                      "label_smoothing_", "kd_reverse_sigmoid_", "kd_mad_", "kd_sdb_")
GENERATED_PREFIXES = ("seed_", "sweep_")

TINY = {"model_name": "net", "num_channels": 4, "dropout_rate": 0.0, "learning_rate": 1e-3,
        "schedule": [999], "gamma": 0.1, "batch_size": 128, "num_epochs": 1, "num_workers": 0,
        "augmentation": 1, "cuda": 0, "dataset": "digits"}
KD = {"teacher_model": "net", "temperature": 4, "alpha": 0.9}
NASTY = {"adversarial_model": "net", "temperature": 4, "weight": 0.04}
# 8 channels: the width the script, reliability, bad-input, kill and torchrun tests were written,
# timed and checked with (their checkpoints are built at this width)
TINY8 = {**TINY, "num_channels": 8}


def write_config(folder, base=TINY, /, **values):
    """`base` (TINY unless given) with `values` changed, as folder/params.json; returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps({**base, **values}, indent=2))
    return folder


def paper_tree(root, ref_base, epochs=1):
    """The paper's five stages, named so that alphabetical order is the wrong order; checkpoint
    paths are written relative to `ref_base`, as the published ones are to the project root."""
    def ref(stage):
        return (root / stage / "best_model.tar").relative_to(ref_base).as_posix()
    write_config(root / "a_kd_nasty" / "student", num_epochs=epochs, **KD,
                 teacher_resume=ref("b_nasty/teacher"))
    write_config(root / "a_kd_normal" / "student", num_epochs=epochs, **KD,
                 teacher_resume=ref("z_base/teacher"))
    write_config(root / "b_nasty" / "teacher", num_epochs=epochs, **NASTY,
                 adversarial_resume=ref("z_base/teacher"))
    write_config(root / "z_base" / "teacher", num_epochs=epochs)
    write_config(root / "z_base" / "student", num_epochs=epochs)
    return root


def fake_train(run, best_acc, epochs=None):
    """What a finished run leaves: metrics rows, best_model.tar and last_model.tar."""
    epochs = run.stage.params.num_epochs if epochs is None else epochs
    run.folder.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "test_acc": best_acc - (epochs - e), "best_acc": best_acc - (epochs - e),
             "best_epoch": e, "seconds": 1.5} for e in range(1, epochs + 1)]
    (run.folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("best_model.tar", "last_model.tar"):
        save_checkpoint(run.folder / name, {"epoch": epochs, "state_dict": {}})


class FakeRunner:
    """Stands in for the scripts: 'trains' with known accuracies, fails the stages named."""

    def __init__(self, accuracy, fail=(), jobs=1):
        self.accuracy, self.fail, self.calls, self.jobs = accuracy, set(fail), [], jobs

    def __call__(self, run, status, progress):
        self.calls.append((run.stage.name, run.seed, status.state, status.epoch))
        if run.stage.name in self.fail:
            return Outcome("failed", 1, 0.5, str(run.folder / "reproduce.log"), "error: boom")
        fake_train(run, self.accuracy(run))
        return Outcome("ran", 0, 0.5, str(run.folder / "reproduce.log"))


def quiet():
    return Progress(stream=open("/dev/null", "w"), live=False)
