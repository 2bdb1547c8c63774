"""Speed switches change speed, not results: off is plain fp32 training; bf16 stays within a point."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from configs import TINY, write_config
from conftest import ROOT

import nets
import train_scratch
from methods import load_params
from utils.base.checkpoint import load_checkpoint
from utils.data.loader import build_loaders
from utils.training.device import seed_everything
from utils.training.speed import Precision, fast_settings
from utils.training.tracking import read_metrics

# 16 channels in batches of 64 (the plain fp32 loop below builds the same 16-channel network)
NET = {**TINY, "num_channels": 16, "batch_size": 64}


def _train(folder, *flags, **changes):
    write_config(folder, NET, **changes)
    train_scratch.main(["--save_path", str(folder), *flags])
    return load_checkpoint(folder / "last_model.tar")["state_dict"], read_metrics(folder / "metrics.jsonl")


@pytest.mark.slow
def test_switches_off_is_plain_fp32_training_bitwise(tmp_path):
    ours, _ = _train(tmp_path / "run", amp="off", channels_last=0, compile=0, deterministic=1)
    # the same epoch written as a plain PyTorch loop
    params = load_params(tmp_path / "run", "scratch")
    seed_everything(0)
    train_loader, _ = build_loaders(params, torch.device("cpu"))
    model = nets.build_model("net", 10, num_channels=16, dropout_rate=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    model.train()
    train_loader.set_epoch(0)
    for images, labels in train_loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_defaults_are_the_switches_off(tmp_path):
    default, _ = _train(tmp_path / "default")
    explicit, _ = _train(tmp_path / "explicit", amp="off", channels_last=0, compile=0, deterministic=1)
    assert all(torch.equal(default[k], explicit[k]) for k in default)


@pytest.mark.slow
def test_bf16_and_channels_last_reach_the_same_accuracy_within_a_point(tmp_path):
    _, fp32 = _train(tmp_path / "fp32", num_epochs=4)
    _, fast = _train(tmp_path / "bf16", num_epochs=4, amp="bf16", channels_last=1)
    assert fp32[-1]["test_acc"] > 90
    assert abs(fp32[-1]["best_acc"] - fast[-1]["best_acc"]) <= 1.0


@pytest.mark.slow
def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(tmp_path):
    _train(tmp_path / "fp16", amp="fp16")
    checkpoint = load_checkpoint(tmp_path / "fp16" / "last_model.tar")
    assert checkpoint["scaler"]["scale"] > 0
    assert "scaler" not in load_checkpoint(_train_and_path(tmp_path / "fp32"))


def _train_and_path(folder):
    _train(folder)
    return folder / "last_model.tar"


def test_precision_casts_only_when_asked():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    for amp, dtype in (("off", torch.float32), ("bf16", torch.bfloat16)):
        precision = Precision(amp, torch.device("cpu"))
        with precision.autocast():
            assert layer(x).dtype == dtype
        assert precision.scaler.is_enabled() is False
    assert Precision("fp16", torch.device("cpu")).scaler.is_enabled()


@pytest.mark.slow
def test_fast_flag_applies_and_logs_the_cpu_settings(tmp_path):
    _train(tmp_path / "fast", "--fast")
    log = (tmp_path / "fast" / "training.log").read_text()
    settings = fast_settings(torch.device("cpu"))
    assert settings["channels_last"] is True
    assert "--fast on cpu: channels_last=True" in log and "channels_last:True" in log
    if "amp" in settings:
        assert "amp:bf16" in log


def test_deterministic_switch_sets_cudnn():
    seed_everything(0, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    seed_everything(0, deterministic=True)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


@pytest.mark.slow
def test_compile_trains_on_cpu(tmp_path):
    """torch.compile on this small CPU may take long: skipped when it needs more than a minute."""
    folder = write_config(tmp_path / "compiled", NET, compile=1)
    try:
        result = subprocess.run([sys.executable, str(ROOT / "train_scratch.py"), "--save_path",
                                 str(folder)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.skip("torch.compile needed more than a minute on this machine")
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(folder / "last_model.tar")["state_dict"]
    assert not any(k.startswith("_orig_mod.") for k in state)  # the bare network is saved
