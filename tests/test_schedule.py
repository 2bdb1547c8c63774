"""reproduce.py's order of the ready runs (repro/schedule.py): the longest chain of work first,
estimated from timed runs or declared multiply-adds; the plan's order with one job."""
import json

import pytest
import torch
from configs import FakeRunner, paper_tree, quiet

import reproduce
from nets.cost import forward_macs
from repro.pipeline import make_plan
from repro.runner import execute
from repro.schedule import chain_seconds, estimate, lower_bound, network_macs, start_order
from utils.data.digits import read_digits
from utils.data.registry import DATASETS

TEACHER, ALONE, NASTY = "z_base/teacher", "z_base/student", "b_nasty/teacher"
KD_NORMAL, KD_NASTY = "a_kd_normal/student", "a_kd_nasty/student"
SECONDS = {TEACHER: 10.0, ALONE: 1.0, NASTY: 10.0, KD_NORMAL: 1.0, KD_NASTY: 1.0}


@pytest.fixture
def plan(tmp_path):
    return make_plan(paper_tree(tmp_path / "tree", tmp_path), seeds=[0, 1])


def _seconds(plan):
    return {run.key: SECONDS[run.stage.name] for run in plan.runs}


def test_a_runs_chain_is_its_work_and_the_longest_chain_below_it(plan):
    chains = chain_seconds(plan, _seconds(plan))
    for seed in (0, 1):
        assert chains[(TEACHER, seed)] == 10 + 10 + 1  # teacher, nasty teacher, its student
        assert chains[(NASTY, seed)] == 11 and chains[(KD_NORMAL, seed)] == 1
    assert lower_bound(plan, _seconds(plan), 2) == 23  # 46 s of work on 2 jobs > the chain of 21
    assert lower_bound(plan, _seconds(plan), 4) == 21


def test_free_jobs_take_a_later_seeds_teachers_before_an_earlier_seeds_students(plan):
    assert start_order(plan, 1, _seconds(plan)) == plan.runs
    order = [run.key for run in start_order(plan, 2, _seconds(plan))]
    assert order[:4] == [(TEACHER, 0), (TEACHER, 1), (NASTY, 0), (NASTY, 1)]
    assert order[4:] == [(ALONE, 0), (KD_NORMAL, 0), (KD_NASTY, 0), (ALONE, 1), (KD_NORMAL, 1),
                         (KD_NASTY, 1)]  # equal chains: the plan's order


def test_execute_takes_the_ready_runs_in_the_given_order(plan):
    order = start_order(plan, 2, _seconds(plan))
    runner = FakeRunner(lambda run: 90.0)
    execute(plan, runner, quiet(), order)
    assert [call[:2] for call in runner.calls] == [run.key for run in order]


def _finished(folder, seconds, epochs=1):
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"num_epochs": epochs}))
    (folder / "best_model.tar").write_bytes(b"")
    (folder / "reproduce.jsonl").write_text(
        "".join(json.dumps({"seconds": s, "exit_code": 0}) + "\n" for s in seconds))


def test_the_estimate_is_the_timed_runs_per_epoch_and_the_declared_work_at_their_rate(plan):
    untimed = estimate(plan)
    assert not untimed.timed
    teacher = plan.stage(TEACHER)
    _finished(teacher.folder / "seed_0", [20.0, 10.0])  # two attempts: 30 s for its 1 epoch
    work = estimate(plan)
    assert work.timed and work.seconds[(TEACHER, 0)] == 0.0  # finished: no work left
    assert work.seconds[(TEACHER, 1)] == 30.0
    # the `net` teacher trains (3 forwards per image); a student or nasty teacher also asks a
    # frozen `net` (4): 4/3 of the teacher's time at the measured rate
    assert work.seconds[(NASTY, 1)] == pytest.approx(40.0)
    assert work.seconds[(KD_NASTY, 0)] == pytest.approx(40.0)
    assert untimed.seconds[(NASTY, 0)] / untimed.seconds[(TEACHER, 0)] == pytest.approx(4 / 3)


def test_a_failed_or_unfinished_attempt_is_not_a_measurement(plan):
    folder = plan.stage(TEACHER).folder / "seed_0"
    _finished(folder, [5.0])
    (folder / "reproduce.jsonl").write_text(json.dumps({"seconds": 5.0, "exit_code": 1}) + "\n")
    assert not estimate(plan).timed


def test_forward_macs_by_hand():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), torch.nn.Flatten(),
                                  torch.nn.Linear(100, 10))
    # 4 x 5 x 5 outputs of 3 x 3 x 3 each; then of 2 x 3 x 3 (2 groups); 10 outputs of 100
    assert forward_macs(network, (3, 5, 5)) == 100 * 27 + 100 * 18 + 10 * 100
    assert network.training  # left as it was


def test_the_networks_declared_cost_orders_them(plan):
    params = plan.stage(TEACHER).params
    assert network_macs(params, "preresnet20") > 100 * network_macs(params, "net")


def test_the_digits_split_size_is_declared():
    assert DATASETS["digits"].train_images == len(read_digits(True).labels)


def test_reproduce_says_what_no_order_can_beat(plan, capsys):
    _finished(plan.stage(TEACHER).folder / "seed_0", [30.0])
    reproduce.main([str(plan.root), "--seeds", "0", "1", "--jobs", "2", "--dry-run"])
    out = capsys.readouterr().out
    assert "Free jobs start the ready stage with the most work behind it" in out
    # left: seed 1 teacher 30, alone 30, nasty 40, the two kd students 40 each; seed 0 the same but
    # its teacher (150 + 180 s); the chain: a teacher, the nasty one, its student
    assert "about 0:05:30 of work left" in out and "the longest chain 0:01:50" in out
    assert "no order ends before 0:02:45 with 2 jobs" in out
    reproduce.main([str(plan.root), "--seeds", "0", "1", "--jobs", "2", "--dry-run", "--order", "plan"])
    assert "Free jobs" not in capsys.readouterr().out
