"""torchrun / DistributedDataParallel on CPU with Gloo: sharding, identical ranks, rank-0 writes,
resume across world sizes, an elastic restart after a killed rank, and a two-"node" rendezvous."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import ddp_probe
import pytest
import torch
from configs import KD, NASTY, TINY8, write_config
from conftest import ROOT
from forkrun import Command, run_scripts

import nets
from methods import params_from_dict
from utils.base.checkpoint import load_checkpoint, load_weights
from utils.base.errors import ConfigError
from utils.base.world import (
    SINGLE,
    World,
    check_world_batch,
    launched_world,
    shard_bounds,
    smallest_shard,
)
from utils.data.augment import CropFlip
from utils.data.cifar import CIFAR_MEAN, CIFAR_STD
from utils.data.loader import DeviceLoader, build_loaders
from utils.data.registry import Split
from utils.training.device import select_device
from utils.training.distributed import _attempt_store, _restart_warning, convert_sync_bn
from utils.training.evaluation import evaluate
from utils.training.tracking import read_metrics

# two epochs in global batches of 100: 15 steps an epoch on the 1438 digits, 50 images a rank
NET = {**TINY8, "batch_size": 100, "num_epochs": 2}
MLP = {k: v for k, v in {**NET, "model_name": "mlp"}.items()
       if k not in ("num_channels", "dropout_rate")}  # without the keys of the `net` CNN


# ----------------------------------------------------------------------------- in one process

def test_shard_bounds_split_contiguously_with_sizes_differing_by_one():
    assert [shard_bounds(0, 10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(100, 102, r, 4) for r in range(4)] == [(100, 101), (101, 102), (102, 102), (102, 102)]
    assert shard_bounds(0, 7, 0, 1) == (0, 7)


def test_smallest_shard_and_the_batch_check():
    assert smallest_shard(1438, 64, 2) == 15          # last batch 30 -> 15 + 15
    assert smallest_shard(50000, 128, 8) == 10        # last batch 80 -> 10 each
    assert smallest_shard(1438, 64, 32) == 0          # last batch 30 over 32 ranks
    check_world_batch("p.json", 64, 1438, World(0, 2, 0))
    check_world_batch("p.json", 1, 1438, SINGLE)      # one process: the old check alone
    with pytest.raises(ConfigError, match=r"batch_size 64 \(the global batch\) over 32 processes "
                                          r"leaves a rank 0 image"):
        check_world_batch("p.json", 64, 1438, World(0, 32, 0))


def test_launched_world_reads_torchrun_environment():
    assert launched_world({}) == SINGLE
    assert launched_world({"WORLD_SIZE": "1", "RANK": "0"}) == SINGLE
    world = launched_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1) and world.distributed and not world.is_main


def _indexed_split(n):
    """Image i holds the value i % 256 in pixel (0, 0, 0) and label i % 10, so batches name their images."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 1, 0, 0] = torch.arange(n) // 256
    return Split(images, torch.arange(n) % 10)


@pytest.mark.parametrize("size", [2, 3])
def test_rank_shares_put_together_are_the_single_process_batches(size):
    make = lambda world: DeviceLoader(_indexed_split(203), 20, "cpu", CIFAR_MEAN, CIFAR_STD,
                                      CropFlip(2, True), shuffle=True, seed=5, world=world)
    single = make(SINGLE)
    ranks = [make(World(r, size, r)) for r in range(size)]
    for loader in [single] + ranks:
        loader.set_epoch(3)
    assert all(len(r) == len(single) == 11 for r in ranks)  # every rank takes every step
    assert single.batch_sizes() == ranks[1].batch_sizes() == [20] * 10 + [3]
    for step, parts in enumerate(zip(single, *ranks)):
        (images, labels), shares = parts[0], parts[1:]
        assert torch.equal(torch.cat([s[0] for s in shares]), images), step
        assert torch.equal(torch.cat([s[1] for s in shares]), labels), step


def test_evaluation_shares_cover_the_split_once():
    loaders = [DeviceLoader(_indexed_split(1001), 64, "cpu", CIFAR_MEAN, CIFAR_STD, world=World(r, 3, r))
               for r in range(3)]
    labels = torch.cat([labels for loader in loaders for _, labels in loader])
    assert torch.equal(labels, torch.arange(1001) % 10)
    assert [sum(1 for _ in loader) for loader in loaders] == [6, 6, 6]  # 334, 334, 333 images
    assert [len(loader) for loader in loaders] == [6, 6, 6]
    assert all(loader.num_samples == 1001 for loader in loaders)


def test_restart_store_choice_follows_the_launcher(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # an empty environ must not read this
    two_nodes = {"TORCHELASTIC_USE_AGENT_STORE": "True", "GROUP_WORLD_SIZE": "2",
                 "TORCHELASTIC_MAX_RESTARTS": "3"}
    assert _attempt_store({}) is None and _attempt_store(two_nodes) is None  # no prefix across nodes
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in _restart_warning(None, two_nodes)
    assert _restart_warning(None, dict(two_nodes, TORCHELASTIC_MAX_RESTARTS="0")) is None
    assert _restart_warning(None, dict(two_nodes, TORCHELASTIC_USE_AGENT_STORE="False")) is None
    assert _restart_warning(None, {}) is None


def test_each_restart_attempt_on_one_node_gets_its_own_keys():
    """The launcher's store outlives an attempt; keys of attempt 2 must not meet those of attempt 1."""
    port = _free_port()
    server = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    environ = {"TORCHELASTIC_USE_AGENT_STORE": "True", "GROUP_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    first = _attempt_store(dict(environ, TORCHELASTIC_RESTART_COUNT="1"))
    second = _attempt_store(dict(environ, TORCHELASTIC_RESTART_COUNT="2"))
    first.set("rank1-address", "old")
    second.set("rank1-address", "new")
    assert first.get("rank1-address") == b"old" and second.get("rank1-address") == b"new"
    assert server.get("nasty-teacher/attempt-2/rank1-address") == b"new"
    assert _restart_warning(second, dict(environ, TORCHELASTIC_MAX_RESTARTS="3")) is None


def _args(**kw):
    return Namespace(**{"gpu_id": None, "device": "auto", "save_path": "runs/x", **kw})


def test_dataparallel_gpu_ids_point_to_torchrun():
    params = params_from_dict(NET, "scratch")
    with pytest.raises(ConfigError, match=r"torchrun \(DistributedDataParallel\).*CUDA_VISIBLE_DEVICES="
                                          r"0,1,2 torchrun --nproc_per_node=3 .* --save_path runs/x"):
        select_device(_args(gpu_id=[0, 1, 2]), params)
    with pytest.raises(ConfigError, match="--gpu_id does not go with torchrun"):
        select_device(_args(gpu_id=[0]), params, World(1, 2, 1))
    assert select_device(_args(), params, World(1, 2, 1)) == torch.device("cpu")  # cuda: 0


def test_sync_bn_is_refused_on_cpu_and_ignored_in_one_process():
    model = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0)
    assert convert_sync_bn(model, SINGLE, torch.device("cpu"), True) is model
    with pytest.raises(ConfigError, match="sync_bn: 1 needs CUDA"):
        convert_sync_bn(model, World(0, 2, 0), torch.device("cpu"), True)


def _collective_worker(rank, port, folder):
    """One of two Gloo processes: rank 0 prepares first; ranks that resumed differently stop."""
    import torch.distributed as dist

    from utils.base import world as world_module
    from utils.training import distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world = World(rank, 2, rank)
    with world_module.main_first(world):
        if rank == 0:
            time.sleep(0.5)  # rank 1 must wait for this, not race it
        with open(folder / "order", "a") as f:
            f.write(f"{rank}\n")
    distributed.check_same_epoch(3)
    try:
        distributed.check_same_epoch(3 + rank)
    except ConfigError as error:
        (folder / f"error{rank}").write_text(str(error))
    # an objective's heads are outside DDP: their gradients are averaged by hand
    head = torch.nn.Parameter(torch.zeros(2))
    head.grad = torch.tensor([1.0, 3.0]) * (rank + 1)
    distributed.average_gradients([head, torch.nn.Parameter(torch.zeros(1))])  # grad None: skipped
    (folder / f"grad{rank}").write_text(repr(head.grad.tolist()))
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank0_prepares_first_and_ranks_must_resume_from_one_epoch(tmp_path):
    torch.multiprocessing.spawn(_collective_worker, args=(_free_port(), tmp_path), nprocs=2)
    assert (tmp_path / "order").read_text() == "0\n1\n"
    for rank in (0, 1):  # the mean of [1, 3] and [2, 6] on both
        assert (tmp_path / f"grad{rank}").read_text() == "[1.5, 4.5]"
    for rank in (0, 1):  # both stop, with the same line
        assert (tmp_path / f"error{rank}").read_text() == (
            "the ranks resumed from different epochs (3 to 4): every node must see the same run "
            "folder (a shared file system)")


def test_an_error_names_its_rank_under_torchrun(monkeypatch, capsys):
    from utils.training.cli import run_script
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    def main(argv):
        raise ConfigError("p.json: bad")
    with pytest.raises(SystemExit) as exit_info:
        run_script(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: rank 1: p.json: bad\n"


# ----------------------------------------------------------------------------- under torchrun

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script, folder, *extra, nproc=2, launcher=(), wait=True):
    launcher = list(launcher) or ["--standalone", f"--nproc_per_node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, str(ROOT / script),
               "--save_path", str(folder), *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return process
    output = _finish(process)
    assert process.returncode == 0, output[-3000:]
    return output


def _finish(process, timeout=300):
    """The launcher's output; a launcher that hangs is killed with its workers (its session)."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0] + "\n[killed after the timeout]"


def _single(script, folder, *extra):
    """One process with the ranks' thread count (1), which also decides float sums; forked from
    the test process's warm server (tests/forkrun.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = run_scripts([Command(ROOT / script, ["--save_path", str(folder), *extra], env=env)])[0]
    assert done.returncode == 0, done.stderr[-3000:]


def _parameter_part(vectors, model):
    """Split the probe's flat state vectors into the parameters only (buffers are per rank)."""
    names = [n for n, _ in model.named_parameters()]
    sizes = {k: v.numel() for k, v in model.state_dict().items()}
    offsets, start = {}, 0
    for name, size in sizes.items():
        offsets[name], start = (start, start + size), start + size
    return [torch.cat([v[slice(*offsets[n])] for n in names]) for v in vectors]


def _probe_in_process(folder):
    """The probe in this process, with the ranks' thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ddp_probe.main(["--save_path", str(folder)])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net_teacher(tmp_path_factory):
    """The `net` CNN trained by two ranks through the probe (train_scratch's run, recording each
    step): both the step-by-step probe of `net` and the teacher of the chain (one launch)."""
    folder = write_config(tmp_path_factory.mktemp("ddp_chain") / "teacher", NET)
    return folder, _torchrun("tests/ddp_probe.py", folder)


@pytest.fixture(scope="module")
def probes(tmp_path_factory, net_teacher):
    root = tmp_path_factory.mktemp("probes")
    runs = {}
    for name, values in (("mlp", dict(MLP, num_epochs=1)), ("net", NET)):
        for nproc in (1, 2):
            folder = write_config(root / f"{name}{nproc}", values)
            if nproc == 1:
                _probe_in_process(folder)
            elif name == "net":
                folder = net_teacher[0]
            else:
                _torchrun("tests/ddp_probe.py", folder)
            runs[name, nproc] = [torch.load(folder / f"probe_rank{r}.pt") for r in range(nproc)]
            runs[name, nproc, "grads"] = [torch.load(folder / f"probe_grads_rank{r}.pt")
                                          for r in range(nproc)]
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "net"])
def test_both_ranks_hold_identical_weights_after_every_step(probes, name):
    model = nets.build_model(name, 10, **({"num_channels": 8, "dropout_rate": 0.0} if name == "net" else {}))
    rank0, rank1 = (_parameter_part(v, model) for v in probes[name, 2])
    epochs = 1 if name == "mlp" else NET["num_epochs"]
    assert len(rank0) == len(rank1) == 15 * epochs  # 1438 images in batches of 100: 15 steps an epoch
    for step, (a, b) in enumerate(zip(rank0, rank1), 1):
        assert torch.equal(a, b), f"step {step}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "net"])
def test_two_ranks_compute_the_global_batch_gradient_of_one_process(probes, name):
    """The first step, from the same initial weights: the gradient DDP averages over two ranks of
    50 images each is the one-process gradient of the 100-image batch, up to the order of float
    sums (without batch norm; with it each rank normalises its own 50 images: a real difference).

    Later steps are no test of this: from step 2 on the weights differ by float noise, which Adam
    (g / (sqrt(v) + eps) makes a near-zero gradient's noise a finite step) and the ReLU kinks (a
    unit that switches changes a gradient at once) amplify; measured on an AVX2 CPU, one process
    with 2 threads and one with 1 thread drift apart by 1e-2 after 30 steps, with no DDP at all."""
    one, rank0 = probes[name, 1, "grads"][0][0], probes[name, 2, "grads"][0][0]
    relative = ((one - rank0).abs().max() / one.abs().max()).item()
    if name == "mlp":
        assert relative < 1e-6  # measured 1.4e-7 (AVX2); float32 sums carry about 1e-7
    else:
        assert 1e-4 < relative < 1.0  # per-rank batch statistics: visibly more than float noise


@pytest.fixture(scope="module")
def chain(net_teacher):
    """scratch (the probe of `net`) -> nasty -> kd, each with 2 ranks."""
    teacher, output = net_teacher
    logs = {"teacher": output}
    nasty = write_config(teacher.parent / "nasty", NET, num_epochs=1, **NASTY,
                         adversarial_resume=str(teacher / "best_model.tar"))
    logs["nasty"] = _torchrun("train_nasty.py", nasty)
    student = write_config(teacher.parent / "student", NET, num_epochs=1, **KD,
                           teacher_resume=str(nasty / "best_model.tar"))
    logs["student"] = _torchrun("train_kd.py", student)
    return {"teacher": teacher, "nasty": nasty, "student": student, "logs": logs}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["teacher", "nasty", "student"])
def test_two_ranks_train_every_stage_and_rank0_alone_writes(chain, stage):
    folder = chain[stage]
    names = sorted(p.name for p in folder.iterdir())
    assert len([n for n in names if n.startswith("events.out.tfevents")]) == 1, names
    extra_files = ["teacher.json"] if stage == "student" else []  # its teacher's accuracy
    if stage == "teacher":  # the probe's own records, one file pair per rank
        extra_files = [f"probe_{kind}rank{r}.pt" for kind in ("", "grads_") for r in (0, 1)]
    assert [n for n in names if not n.startswith("events.out.tfevents")] == sorted([
        ".lock", "best_model.tar", "last_model.tar", "metrics.jsonl", "params.json", "training.log",
        *extra_files])
    log = (folder / "training.log").read_text()
    assert log.count("Epoch 1/") == 1 and "torchrun: 2 processes; global batch 100" in log
    assert chain["logs"][stage].count("- Eval metrics") == load_checkpoint(folder / "last_model.tar")["epoch"]
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    state_dict = load_checkpoint(folder / "last_model.tar")["state_dict"]
    assert not any(k.startswith("module.") for k in state_dict)


@pytest.mark.slow
def test_sharded_evaluation_is_exact_accuracy_of_the_checkpoint(chain):
    """The all-reduced test accuracy of the 2-rank run equals a one-process evaluation of the
    checkpoint it saved (rank 0's batch-norm statistics are shared before evaluating)."""
    params = params_from_dict(NET, "scratch")
    _, test_loader = build_loaders(params, torch.device("cpu"))
    model = nets.build_model("net", 10, num_channels=8, dropout_rate=0.0)
    load_weights(model, chain["teacher"] / "last_model.tar")
    recorded = read_metrics(chain["teacher"] / "metrics.jsonl")[-1]
    measured = evaluate(model, test_loader)
    assert measured["acc"] == recorded["test_acc"]
    assert measured["loss"] == pytest.approx(recorded["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_resume_across_world_sizes(chain, tmp_path):
    """Two ranks (the chain's teacher, 2 epochs), then one, then two again: each run resumes the
    other's checkpoint (2 -> 1 and 1 -> 2)."""
    folder = tmp_path / "run"
    shutil.copytree(chain["teacher"], folder)
    launch = lambda n, *extra: (_single("train_scratch.py", folder, *extra) if n == 1
                                else _torchrun("train_scratch.py", folder, *extra))
    for epochs, processes in ((3, 1), (4, 2)):
        write_config(folder, NET, num_epochs=epochs)
        launch(processes, "--resume", "auto")
        assert [r["epoch"] for r in read_metrics(folder / "metrics.jsonl")] == list(range(1, epochs + 1))
        assert load_checkpoint(folder / "last_model.tar")["epoch"] == epochs
    assert (folder / "training.log").read_text().count("Resumed from") == 2


def _rank_pid(folder, rank):
    """The pid of the training process of `rank` whose command line names `folder`."""
    for entry in Path("/proc").iterdir():
        try:
            if (str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace")
                    and f"\0RANK={rank}\0" in "\0" + (entry / "environ").read_bytes().decode(errors="replace")):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


@pytest.mark.slow
def test_elastic_restart_after_a_killed_rank_ends_with_the_uninterrupted_weights(net_teacher, tmp_path):
    """The chain's teacher run again, rank 1 killed once epoch 1 is saved: torchrun restarts both
    ranks, which resume and end with the uninterrupted run's weights."""
    folder = write_config(tmp_path / "killed", NET)
    process = _torchrun("train_scratch.py", folder, "--resume", "auto", wait=False,
                        launcher=["--standalone", "--nproc_per_node=2", "--max_restarts=1"])
    deadline = time.time() + 120
    while not (folder / "last_model.tar").exists() and time.time() < deadline:
        time.sleep(0.01)
    pid = _rank_pid(folder, 1)
    assert pid is not None and read_metrics(folder / "metrics.jsonl")[-1]["epoch"] < NET["num_epochs"]
    os.kill(pid, signal.SIGKILL)
    output = _finish(process)
    assert process.returncode == 0, output[-3000:]
    assert "Resumed from" in (folder / "training.log").read_text()  # the restart continued
    assert [r["epoch"] for r in read_metrics(folder / "metrics.jsonl")] == [1, 2]
    expected = load_checkpoint(net_teacher[0] / "last_model.tar")["state_dict"]
    final = load_checkpoint(folder / "last_model.tar")
    assert final["epoch"] == NET["num_epochs"]
    assert all(torch.equal(expected[k], final["state_dict"][k]) for k in expected)


@pytest.mark.slow
def test_two_nodes_meet_through_c10d_rendezvous(tmp_path):
    """Two launchers on one machine stand in for two nodes: the multi-node command, unchanged code."""
    folder = write_config(tmp_path / "run", NET, num_epochs=1)
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = [_torchrun("train_scratch.py", folder, wait=False, launcher=[
        "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint={endpoint}", "--rdzv_id=nasty-test"]) for node in (0, 1)]
    outputs = [_finish(p) for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "torchrun: 2 processes" in (folder / "training.log").read_text()
    assert load_checkpoint(folder / "last_model.tar")["epoch"] == 1


@pytest.mark.slow
def test_data_free_student_under_torchrun_rank0_synthesises_the_others_wait(chain, tmp_path, monkeypatch):
    """Rank 1 waits for rank 0's synthetic set by polling the cache (no collective that could time
    out), and both ranks train on the set a single process makes."""
    recipe = dict(method="deepinversion", **KD, teacher_resume=str(chain["teacher"] / "best_model.tar"),
                  synthesis_images=32, synthesis_batch=16, synthesis_iterations=3)
    ranks = write_config(tmp_path / "ranks", NET, num_epochs=1, batch_size=16, **recipe)
    output = _torchrun("train_kd.py", ranks)
    single = write_config(tmp_path / "single", NET, num_epochs=1, batch_size=16, **recipe)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks' thread count: the same sums
    _single("train_kd.py", single, "--device", "cpu")
    made = [load_checkpoint(folder / "synthetic.pt")["state_dict"] for folder in (ranks, single)]
    assert torch.equal(made[0]["images"], made[1]["images"]) and made[0]["images"].shape[0] == 32
    assert output.count("Synthesis batch 2/2") == 1, output[-2000:]  # rank 0 alone made it
    assert len(read_metrics(ranks / "metrics.jsonl")) == 1
