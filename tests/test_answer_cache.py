"""teacher_cache: a teacher's answers kept for the next student with the same batches
(utils/training/answer_cache.py, methods/kd.keep_answers). The promise: fewer teacher forwards,
never another number."""
import logging

import pytest
import torch
from configs import TINY, write_config

import methods.base
import train_kd
import train_scratch
from utils.base.checkpoint import load_checkpoint, save_checkpoint
from utils.training.answer_cache import AnswerCache, split_digest
from utils.training.step import Step

LOG = logging.getLogger("test_answer_cache")
STEPS = 3


def _answers(epoch, index):
    return torch.full((2, 4), 10.0 * epoch + index)


class Teacher:
    """compute() of a run: counts the forwards; `shift` makes a network with other answers."""

    def __init__(self, shift=0.0):
        self.calls, self.shift = [], shift

    def run(self, cache, epochs=2):
        outputs = []
        for epoch in range(epochs):
            for index in range(STEPS):
                step = Step(epoch, index, STEPS)
                outputs.append(cache.outputs(step, lambda: self.forward(epoch, index)))
        return outputs

    def forward(self, epoch, index):
        self.calls.append((epoch, index))
        return _answers(epoch, index) + self.shift


def test_the_first_run_writes_each_epoch_and_the_next_reads_it_checking_its_first_batch(tmp_path):
    first, second = Teacher(), Teacher()
    made = first.run(AnswerCache(tmp_path, LOG))
    assert len(first.calls) == 2 * STEPS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.pt", "epoch_1.pt"]
    read = second.run(AnswerCache(tmp_path, LOG))
    assert second.calls == [(0, 0), (1, 0)]  # one forward per epoch: the check
    assert all(torch.equal(a, b) for a, b in zip(made, read))


def test_a_file_of_other_answers_is_dropped_and_the_run_computes_everything(tmp_path, caplog):
    Teacher().run(AnswerCache(tmp_path, LOG))
    other = Teacher(shift=1e-6)
    with caplog.at_level(logging.WARNING):
        outputs = other.run(AnswerCache(tmp_path, LOG))
    assert len(other.calls) == 2 * STEPS
    assert torch.equal(outputs[1], _answers(0, 1) + 1e-6)
    assert "its first batch differs" in caplog.text and "computes every answer itself" in caplog.text


def test_a_file_with_other_batches_or_damaged_is_dropped(tmp_path, caplog):
    save_checkpoint(tmp_path / "epoch_0.pt", {"state_dict": {"0": _answers(0, 0)}})  # 1 batch, not 3
    teacher = Teacher()
    with caplog.at_level(logging.WARNING):
        teacher.run(AnswerCache(tmp_path, LOG), epochs=1)
    assert len(teacher.calls) == STEPS and "holds 1 batches of answers, not this run's 3" in caplog.text
    (tmp_path / "epoch_0.pt").write_bytes(b"not a checkpoint")
    teacher = Teacher()
    teacher.run(AnswerCache(tmp_path, LOG), epochs=1)
    assert len(teacher.calls) == STEPS and "is damaged or truncated" in caplog.text


def test_a_folder_that_takes_no_files_costs_nothing_but_the_warning(tmp_path, caplog):
    (tmp_path / "answers").write_text("a file where the folder would be")
    teacher = Teacher()
    with caplog.at_level(logging.WARNING):
        outputs = teacher.run(AnswerCache(tmp_path / "answers" / "digest", LOG))
    assert len(teacher.calls) == 2 * STEPS and torch.equal(outputs[-1], _answers(1, 2))
    assert caplog.text.count("takes no files") == 1  # dropped once, not at every epoch


def test_an_epoch_not_seen_from_its_first_step_is_not_written(tmp_path):
    cache, teacher = AnswerCache(tmp_path, LOG), Teacher()
    for index in (1, 2):
        cache.outputs(Step(0, index, STEPS), lambda: teacher.forward(0, index))
    assert not (tmp_path / "epoch_0.pt").exists()


def test_the_split_digest_is_the_content():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(4)
    changed = images.clone()
    changed[3, 0, 1, 1] = 1
    assert split_digest(images, labels) == split_digest(images.clone(), labels.clone())
    assert split_digest(changed, labels) != split_digest(images, labels)
    assert split_digest(images, labels.flip(0)) != split_digest(images, labels)


def test_an_answer_that_asks_the_teacher_itself_skips_the_plain_forward():
    seen = []

    class Network(torch.nn.Module):
        def forward(self, images):
            seen.append(images)
            return images.flatten(1)

    class Asks:
        needs_logits = False

        def __call__(self, images, logits):
            assert logits is None
            return network(images + 1)

    network = Network()
    objective = methods.base.AgainstFrozen("teacher", network, lambda s, t, y: {"loss": t.sum()},
                                           transform=Asks())
    images = torch.zeros(2, 1, 1, 2)
    objective(torch.nn.Flatten(), images, torch.zeros(2), Step(0, 0, 1))
    assert len(seen) == 1 and torch.equal(seen[0], images + 1)


def test_a_defence_that_asks_other_queries_keeps_nothing(tmp_path, caplog):
    from types import SimpleNamespace

    from methods.kd import keep_answers
    from methods.sdb import KeyedAnswer
    objective = SimpleNamespace(transform=KeyedAnswer(None, None, 0.9), cache=None)
    run = SimpleNamespace(params=SimpleNamespace(teacher_resume=str(tmp_path / "t.tar")), log=LOG,
                          objective=objective)
    with caplog.at_level(logging.INFO):
        keep_answers(run)
    assert objective.cache is None and "nothing to keep" in caplog.text
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = write_config(tmp_path_factory.mktemp("cache") / "teacher")
    train_scratch.main(["--save_path", str(folder)])
    return folder


STUDENTS = {"kd": {"temperature": 4, "alpha": 0.9}, "dkd": {"temperature": 4, "dkd_warmup": 2},
            "hard_label": {}, "skeptical": {"temperature": 4, "alpha": 0.9}}


@pytest.mark.parametrize("method", list(STUDENTS))
def test_students_of_one_teacher_train_the_same_weights_with_and_without_the_cache(
        teacher, tmp_path, method, monkeypatch):
    """Run 1 writes the answers, run 2 reads them, run 3 keeps none: one set of weights; run 2's
    teacher computes the first batch of each epoch only. (Each method its own seed: its own set.)"""
    forwards = []
    real = AnswerCache.outputs
    monkeypatch.setattr(AnswerCache, "outputs", lambda self, step, compute: real(
        self, step, lambda: forwards.append(step) or compute()))
    values = {**TINY, **STUDENTS[method], "method": method, "num_epochs": 2, "batch_size": 256,
              "seed": list(STUDENTS).index(method) + 10, "teacher_model": "net",
              "teacher_resume": str(teacher / "best_model.tar")}
    weights, counts = [], []
    for name, cache in (("writes", 1), ("reads", 1), ("none", 0)):
        folder = write_config(tmp_path / name, values, teacher_cache=cache)
        before = len(forwards)
        train_kd.main(["--save_path", str(folder)])
        weights.append(load_checkpoint(folder / "last_model.tar")["state_dict"])
        counts.append(len(forwards) - before)
    steps = -(-1438 // 256)
    assert counts == [2 * steps, 2, 0]  # the reader's teacher: the first batch of each epoch
    log = (tmp_path / "reads" / "training.log").read_text()
    assert "Teacher answers read from" in log and "Teacher answers kept in" in log
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])
