"""What reproduce.py shows while it works: one line per run, and on a terminal a live status line.

    progress = Progress()                      # live line only when stdout is a terminal
    progress.begin(15); progress.start(3, run, status)
    progress.output(run, "Epoch 4/15\n")       # a child's lines: epoch and accuracy for the live line
    progress.end(3, run, outcome)

The permanent lines look like
    [3/15 0:02:41] kd_nasty_preresnet20/nasty_preresnet20 (nasty, preresnet20): ran in 67 s, best 98.89
so a log of a batch job reads the same as the screen. With several jobs the live line shows every
running stage; the runs' threads call in together, so every method holds one lock.
"""
import re
import shutil
import sys
import threading
import time

from utils.training.tracking import read_metrics

from .pipeline import RunState
from .runner import Result, exit_text

EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+)")
EVAL_LINE = re.compile(r"^- Eval metrics : acc: ([0-9.]+)")


def clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def best_accuracy(folder):
    rows = read_metrics(folder / "metrics.jsonl")
    return rows[-1].get("best_acc") if rows else None


class Progress:
    def __init__(self, stream=None, live=None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.total, self.started, self.shown = 0, time.time(), False
        self.running = {}  # run.key -> [position, run, epoch text, accuracy text]
        self.lock = threading.RLock()

    def begin(self, total):
        self.total, self.started = total, time.time()

    def prefix(self, position, run):
        stage = run.stage
        return (f"[{position}/{self.total} {clock(time.time() - self.started)}] {run.label} "
                f"({stage.method.name}, {stage.params.model_name})")

    def start(self, position, run, status):
        what = (f"resuming after epoch {status.epoch} of {status.num_epochs}"
                if status.state == RunState.RESUME else
                f"training {status.num_epochs} epoch{'s' if status.num_epochs > 1 else ''}")
        with self.lock:
            self.running[run.key] = [position, run, "", ""]
            self.line(f"{self.prefix(position, run)}: {what}, log: {run.folder / 'reproduce.log'}")

    def output(self, run, text):
        """A line of `run`'s output: keeps the live line's epoch and accuracy current."""
        epoch, accuracy = EPOCH_LINE.match(text), EVAL_LINE.match(text)
        if not (epoch or accuracy):
            return
        with self.lock:
            state = self.running.get(run.key)
            if state is None:
                return
            if epoch:
                state[2] = f"epoch {epoch.group(1)}/{epoch.group(2)}"
            if accuracy:
                state[3] = f", test acc {float(accuracy.group(1)):.2f}"
            if self.live:
                self.draw(self.status_text())

    def status_text(self):
        states = list(self.running.values())
        if len(states) == 1:
            position, run, epoch, accuracy = states[0]
            return f"{self.prefix(position, run)}: {epoch}{accuracy}"
        parts = [f"{run.label} {epoch}{accuracy.replace(', test acc', ' acc')}".strip()
                 for _, run, epoch, accuracy in states]
        return f"[{clock(time.time() - self.started)}] {len(states)} running: " + " | ".join(parts)

    def end(self, position, run, outcome):
        with self.lock:
            self.running.pop(run.key, None)
            self.line(f"{self.prefix(position, run)}: {self.result(run, outcome)}")

    @staticmethod
    def result(run, outcome):
        best = best_accuracy(run.folder)
        best = "" if best is None else f", best {best:.2f}"
        if outcome.state == Result.DONE:
            return f"finished earlier, skipped{best}"
        if outcome.state == Result.RAN:
            return f"ran in {outcome.seconds:.0f} s{best}"
        if outcome.state == Result.FAILED and outcome.log is None:  # refused before it started
            return f"not trained: {outcome.message}"
        if outcome.state == Result.FAILED:
            return (f"failed ({exit_text(outcome.exit_code)}), log: {outcome.log}"
                    + (f"\n    {outcome.message}" if outcome.message else ""))
        return f"skipped: {outcome.message}"

    def draw(self, text):
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\x1b[K" + text[:width])
        self.stream.flush()
        self.shown = True

    def line(self, text):
        """A permanent line (the live line, if any, is cleared first and drawn again after)."""
        with self.lock:
            if self.shown:
                self.stream.write("\r\x1b[K")
                self.shown = False
            self.stream.write(text + "\n")
            self.stream.flush()
            if self.live and len(self.running) > 1:
                self.draw(self.status_text())
