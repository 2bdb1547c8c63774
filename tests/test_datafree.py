"""Data-free distillation (methods/deepinversion.py): the loss terms against
hand-computed values, the synthesis, its cache and resume, the keys, and the claim that a student
distilled from images synthesised from a trained Digits teacher alone is well above chance."""
import json
import logging
import math

import pytest
import torch

import methods
import torch.nn as nn
from configs import KD, TINY, write_config

import train_kd
import train_scratch
import utils.data.digits
from methods import params_from_dict
from methods.deepinversion import (
    CACHE_NAME,
    BatchNormInputs,
    Recipe,
    bn_statistic_loss,
    l2_prior,
    pixel_bounds,
    synthesize_batch,
    synthetic_set,
    tv_priors,
)
from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError
from utils.data.loader import build_loaders
from utils.data.registry import DATASETS
from utils.training.params import describe

DIGITS = DATASETS["digits"]
LOG = logging.getLogger("test_datafree")
TINY_RECIPE = Recipe(images=20, batch=8, iterations=4, lr=0.1, bn_weight=1.0, first_bn_multiplier=1.0,
                     tv_l1=0.0, tv_l2=0.003, l2=0.0, jitter=2, flip=True, seed=3)


def test_bn_statistic_loss_by_hand():
    # channel 0 holds 1, 3, 5, 7: mean 4, biased variance (9 + 1 + 1 + 9) / 4 = 5;
    # channel 1 holds 0, 0, 2, 2: mean 1, variance 1
    conv = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[5.0, 7.0]], [[2.0, 2.0]]]])  # (2, 2, 1, 2)
    # against running means (3, 1) and variances (4, 0): ||(1, 0)|| + ||(1, 1)|| = 1 + sqrt(2)
    first = 1 + math.sqrt(2)
    flat = torch.tensor([[1.0], [3.0]])  # a BatchNorm1d input: mean 2, variance 1; vs (0, 1): 2 + 0
    loss = bn_statistic_loss([conv, flat], [torch.tensor([3.0, 1.0]), torch.tensor([0.0])],
                             [torch.tensor([4.0, 0.0]), torch.tensor([1.0])])
    assert loss.item() == pytest.approx(first + 2, rel=1e-6)
    weighted = bn_statistic_loss([conv, flat], [torch.tensor([3.0, 1.0]), torch.tensor([0.0])],
                                 [torch.tensor([4.0, 0.0]), torch.tensor([1.0])], first_multiplier=10)
    assert weighted.item() == pytest.approx(10 * first + 2, rel=1e-6)


def test_tv_and_l2_priors_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    # right: -1, -2; down: -3, -4; up-right diagonal: 3 - 1 = 2; down-right diagonal: 0 - 5 = -5
    tv1, tv2 = tv_priors(x)
    assert tv1.item() == pytest.approx(1.5 + 3.5 + 2 + 5)
    assert tv2.item() == pytest.approx(math.sqrt(5) + 5 + 2 + 5)
    assert l2_prior(x).item() == pytest.approx(math.sqrt(35))


def test_hooks_see_what_every_batch_norm_layer_receives():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 30 * 30, 4),
                            nn.BatchNorm1d(4)).eval()
    x = torch.randn(5, 3, 32, 32)
    with BatchNormInputs(network) as captured:
        network(x)
        loss = captured.loss(first_multiplier=2.0)
    conv_out = network[0](x)
    expected = bn_statistic_loss([conv_out, network[3](network[2](network[1](conv_out)))],
                                 [network[1].running_mean, network[4].running_mean],
                                 [network[1].running_var, network[4].running_var], 2.0)
    assert torch.allclose(loss, expected)


@pytest.fixture(scope="module")
def teacher():
    """A `net` whose batch-norm statistics are those of real digits (random weights: enough to
    check that the synthesis moves towards them)."""
    torch.manual_seed(0)
    params = params_from_dict({**TINY, "data_dir": "unused"})
    _, test = build_loaders(params, "cpu", 359)
    from utils.training.networks import build_network, freeze
    network = build_network(params, "net")
    network.train()
    with torch.no_grad():
        for _ in range(20):
            network(next(iter(test))[0])
    return freeze(network)


def test_synthesis_lowers_the_bn_statistic_loss_and_stays_in_the_pixel_range(teacher):
    recipe = TINY_RECIPE._replace(iterations=30)
    bounds = pixel_bounds(DIGITS.mean, DIGITS.std, "cpu")
    x, stats = synthesize_batch(teacher, recipe, torch.arange(16) % 10, (16, 3, 32, 32),
                                torch.Generator().manual_seed(0), bounds)
    assert stats["bn"] < 0.5 * stats["bn_start"]
    assert (x >= bounds[0] - 1e-6).all() and (x <= bounds[1] + 1e-6).all()


def _synthesise(teacher, folder, recipe=TINY_RECIPE, made_by=None, until=None):
    folder.mkdir(exist_ok=True)
    return synthetic_set(teacher, recipe, made_by or {"teacher": "a"}, folder, "cpu", LOG,
                         DIGITS.mean, DIGITS.std, 10, 32, until=until)


def test_a_stopped_synthesis_resumes_to_the_same_set_bit_for_bit(teacher, tmp_path):
    whole = _synthesise(teacher, tmp_path / "whole")
    part = _synthesise(teacher, tmp_path / "stopped", until=1)  # stopped after batch 1 of 3
    assert len(part.labels) == 8
    resumed = _synthesise(teacher, tmp_path / "stopped")
    assert whole.images.dtype == torch.uint8 and whole.images.shape == (20, 3, 32, 32)
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)
    assert whole.labels.tolist() == [i % 10 for i in range(20)]
    # a finished set is read, not rewritten; the lock file goes with the run that made it
    cache = tmp_path / "whole" / CACHE_NAME
    before = cache.stat().st_mtime_ns
    assert torch.equal(_synthesise(teacher, tmp_path / "whole").images, whole.images)
    assert cache.stat().st_mtime_ns == before


def test_a_cache_made_otherwise_is_refused_in_one_line(teacher, tmp_path):
    _synthesise(teacher, tmp_path / "run", until=1)
    with pytest.raises(ConfigError) as error:
        _synthesise(teacher, tmp_path / "run", TINY_RECIPE._replace(lr=0.2))
    message = str(error.value)
    assert "lr 0.1 -> 0.2" in message and "delete it" in message and "\n" not in message
    with pytest.raises(ConfigError, match="teacher 'a' -> 'b'"):
        _synthesise(teacher, tmp_path / "run", made_by={"teacher": "b"})


def test_keys_defaults_and_their_mistakes():
    config = {**TINY, **KD, "method": "deepinversion", "teacher_resume": "t.tar"}
    params = params_from_dict(config, "kd")
    assert (params.synthesis_images, params.synthesis_batch, params.synthesis_iterations,
            params.synthesis_lr, params.synthesis_bn_weight, params.synthesis_tv_l2,
            params.synthesis_jitter, params.synthesis_flip) == (50000, 256, 2000, 0.05, 10.0, 2.5e-5,
                                                                2, False)
    with pytest.raises(ConfigError) as error:
        params_from_dict({**config, "synthesis_iteration": 10, "synthesis_batch": 1.5,
                          "synthesis_lr": -1}, "kd")
    message = str(error.value)
    assert "unknown key 'synthesis_iteration' (did you mean 'synthesis_iterations'?)" in message
    assert "synthesis_batch = 1.5 must be an integer" in message
    assert "synthesis_lr = -1 must be > 0" in message and "\n" not in message
    with pytest.raises(ConfigError, match="synthesis_images = 100 is smaller than batch_size = 128"):
        params_from_dict({**config, "synthesis_images": 100}, "kd")
    assert "synthesis_bn_weight" in describe(methods.TABLE, "deepinversion")


@pytest.mark.slow
def test_student_distilled_from_synthetic_digits_alone_is_well_above_chance(tmp_path, monkeypatch):
    teacher = write_config(tmp_path / "teacher", num_epochs=8)
    train_scratch.main(["--save_path", str(teacher), "--device", "cpu"])
    read = utils.data.digits.read_digits

    def test_split_only(train):
        assert not train, "a data-free run read the real training split"
        return read(train)
    monkeypatch.setattr(utils.data.digits, "read_digits", test_split_only)
    student = write_config(tmp_path / "student", num_epochs=40, batch_size=64, method="deepinversion",
                           **KD, teacher_resume=str(teacher / "best_model.tar"),
                           synthesis_images=256, synthesis_batch=128, synthesis_iterations=100,
                           synthesis_lr=0.1, synthesis_bn_weight=1.0, synthesis_tv_l2=0.003)
    train_kd.main(["--save_path", str(student), "--device", "cpu"])
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["best_acc"] > 30.0  # 10 classes: chance is 10%
    assert "Synthesis batch 2/2" in (student / "training.log").read_text()


def test_the_synthetic_figure_shows_each_teachers_set(teacher, tmp_path):
    from types import SimpleNamespace

    from repro import figures
    run = tmp_path / "normal" / "deepinversion"
    run.mkdir(parents=True)
    images = _synthesise(teacher, run).images
    grid = figures.image_grid(images[:12])  # 2 rows of 10, 2-pixel white gaps
    assert grid.shape == (2 + 2 * 34, 2 + 10 * 34, 3) and (grid[36:68, 2:34] == images[10].permute(1, 2, 0).numpy()).all()
    results = {"seeds": None, "notes": [], "groups": [], "matrices": [{"figures": []}], "stages": {
        "normal/deepinversion": {"method": "deepinversion",
                                 "runs": [{"finished": True, "folder": str(run), "seed": 0}]},
        # a stage whose runs hold no synthetic set draws nothing
        "normal/kd": {"method": "kd", "runs": [{"finished": True, "folder": str(tmp_path), "seed": 0}]}}}
    method = {name: methods.base.get_method(name) for name in ("deepinversion", "kd")}
    plan = SimpleNamespace(root=tmp_path, stage=lambda name: SimpleNamespace(
        parent="baseline/teacher", method=method[name.rsplit("/", 1)[-1]]))
    assert [title for title, _, _ in figures.synthetic_sets(plan, results)] == \
        ["normal/deepinversion: from baseline/teacher"]
    figures.add_synthetic_figure(plan, results, figures.pyplot())
    assert results["matrices"][0]["figures"] == ["synthetic.png"]
    assert (tmp_path / "synthetic.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- a set shared by students

def test_waiting_lock_waits_for_its_holder(tmp_path):
    import os
    import threading

    from utils.base.lock import waiting_lock
    path, events, noted = tmp_path / "set.lock", [], []
    with waiting_lock(path):
        def second():
            with waiting_lock(path, on_wait=noted.append):
                events.append("second holds it")
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.3)
        events.append("first lets go")
    thread.join(5)
    assert events == ["first lets go", "second holds it"] and noted == [str(os.getpid())]


def _teacher_file(teacher, folder):
    from utils.base.checkpoint import save_checkpoint
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best_model.tar", {"epoch": 1, "state_dict": teacher.state_dict()})
    return folder / "best_model.tar"


def _shared_run(teacher, teacher_file, folder, caplog, **changes):
    """The deepinversion train split of a run in `folder` (synthesis_shared 1) and its log."""
    from methods.deepinversion import synthetic_split
    from utils.base.world import SINGLE
    params = params_from_dict({**TINY, **KD, "method": "deepinversion", "batch_size": 8,
                               "teacher_resume": str(teacher_file), "synthesis_images": 20,
                               "synthesis_batch": 8, "synthesis_iterations": 4, "synthesis_lr": 0.1,
                               "synthesis_bn_weight": 1.0, "synthesis_shared": 1, **changes}, "kd")
    folder.mkdir(parents=True, exist_ok=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOG.name):
        split = synthetic_split(params, {"teacher": teacher}, folder, LOG, SINGLE)
    return split, caplog.text


def test_students_of_one_teacher_share_one_set_whatever_their_defence(teacher, tmp_path, caplog):
    teacher_file = _teacher_file(teacher, tmp_path / "teacher")
    first, made = _shared_run(teacher, teacher_file, tmp_path / "normal", caplog)
    second, read = _shared_run(teacher, teacher_file, tmp_path / "stingy", caplog,
                               teacher_output="sparse", sparse_ratio=0.2)
    assert made.count("Synthesis batch") == 3 and "Synthesis batch" not in read
    assert "read from" in read and str(tmp_path / "teacher" / "synthetic") in read
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    shared = list((tmp_path / "teacher" / "synthetic").glob("*.pt"))
    assert len(shared) == 1
    for run in ("normal", "stingy"):  # each run folder keeps its copy
        assert torch.equal(load_checkpoint(tmp_path / run / CACHE_NAME)["state_dict"]["images"], first.images)
    # another seed is another set, in a file of its own; the same set as a run folder's own
    other, _ = _shared_run(teacher, teacher_file, tmp_path / "seed1", caplog, seed=1)
    assert not torch.equal(other.images, first.images)
    assert len(list((tmp_path / "teacher" / "synthetic").glob("*.pt"))) == 2
    alone, _ = _shared_run(teacher, teacher_file, tmp_path / "alone", caplog, synthesis_shared=0)
    assert torch.equal(alone.images, first.images) and not (tmp_path / "alone" / "synthetic").exists()


def test_a_shared_set_stopped_half_way_is_completed_by_the_next_student(teacher, tmp_path):
    from methods.deepinversion import shared_cache_path
    made_by = {"teacher": "a"}
    shared = shared_cache_path(tmp_path / "teacher" / "best_model.tar", {**TINY_RECIPE._asdict(), **made_by})
    assert shared.parent == tmp_path / "teacher" / "synthetic"
    (tmp_path / "teacher").mkdir()
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    synthetic_set(teacher, TINY_RECIPE, made_by, tmp_path / "first", "cpu", LOG, DIGITS.mean, DIGITS.std,
                  10, 32, until=1, shared=shared)
    assert load_checkpoint(shared)["batches_done"] == 1
    completed = synthetic_set(teacher, TINY_RECIPE, made_by, tmp_path / "second", "cpu", LOG, DIGITS.mean,
                              DIGITS.std, 10, 32, shared=shared)
    assert torch.equal(completed.images, _synthesise(teacher, tmp_path / "own").images)


def test_a_teacher_folder_that_takes_no_files_means_a_set_of_its_own(teacher, tmp_path, caplog):
    teacher_file = _teacher_file(teacher, tmp_path / "teacher")
    (tmp_path / "teacher" / "synthetic").write_text("a file where the folder would be")
    split, log = _shared_run(teacher, teacher_file, tmp_path / "run", caplog)
    assert "takes no files" in log and "synthesises its own set" in log
    assert split.images.shape == (20, 3, 32, 32) and (tmp_path / "run" / CACHE_NAME).exists()
