"""Per-epoch records of a run: training.log lines (the original's wording), metrics.jsonl, tensorboard;
and a student's teacher.json (its teacher's accuracy, plain and through the run's defence).

    tracker = EpochLog(save_path, log, method.log_lines, ("loss", "ce", "kl"), start_epoch=0)
    tracker.record(epoch, lr, train_terms, test_metrics, best_state, new_best, seconds)

Every loss term of the method is recorded as `train_<name>` in metrics.jsonl and as `train/<name>`
in tensorboard; training.log has the lines the method names (the original's for scratch, nasty
and kd). metrics.jsonl has one JSON object per finished epoch (with the numerics fingerprint of the
process that trained it, see utils/base/provenance.py); on resume, lines of epochs after
the checkpoint are dropped so the file always describes the run that the checkpoints continue.
"""
import json
import os
from pathlib import Path

from utils.base.checkpoint import save_json


class EpochLog:
    def __init__(self, save_path, log, log_lines, term_names, start_epoch=0, numerics=None):
        self.log, self.log_lines, self.term_names = log, log_lines, tuple(term_names)
        self.numerics = numerics  # the fingerprint line of the process that trains these epochs
        self.metrics_path = Path(save_path) / "metrics.jsonl"
        keep_epochs_up_to(self.metrics_path, start_epoch)
        self.writer = _tensorboard_writer(save_path, log)

    def record(self, epoch, lr, train, test, state, new_best, seconds):
        for key, label in self.log_lines:
            self.log.info(f"- {label} : {train[key]:05.3f}")
        self.log.info(f"- Eval metrics : acc: {test['acc']:05.3f} ; loss: {test['loss']:05.3f}")
        if new_best:
            self.log.info("- New best model ")
        self.log.info(f"- So far best epoch: {state['best_epoch']}, best acc: {state['best_acc']:05.3f}")
        self.log.info(f"- Epoch time: {seconds:.1f}s")
        terms = {f"train_{name}": train[name] for name in self.term_names}
        row = {"epoch": epoch + 1, "lr": lr, **terms, "train_acc": train["acc"],
               "test_acc": test["acc"], "test_loss": test["loss"], "new_best": new_best,
               "best_acc": state["best_acc"], "best_epoch": state["best_epoch"],
               "seconds": round(seconds, 3)}
        if self.numerics:  # per epoch: a run resumed on another machine shows both
            row["numerics"] = self.numerics
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            for key in (*terms, "train_acc", "test_acc", "test_loss", "lr"):
                self.writer.add_scalar(key.replace("_", "/", 1), row[key], epoch + 1)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def read_jsonl(path):
    """The rows of a JSON-lines file such as metrics.jsonl (a torn last line from a killed write
    is skipped)."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


read_metrics = read_jsonl

TEACHER_RECORD = "teacher.json"  # a student's run folder: its teacher's accuracy, through its defence


def write_teacher_record(save_path, record):
    save_json(Path(save_path) / TEACHER_RECORD, record)


def read_teacher_record(folder):
    """What a student run measured of its teacher ({} before it started, or for older runs)."""
    path = Path(folder) / TEACHER_RECORD
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def keep_epochs_up_to(path, last_epoch):
    rows = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]
    if Path(path).exists():
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)


def _tensorboard_writer(save_path, log):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        log.info("- tensorboardX is not installed: no tensorboard scalars (metrics.jsonl has them all)")
        return None
    return SummaryWriter(logdir=str(save_path))
