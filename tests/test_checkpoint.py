"""Checkpoints: the authors' files load and give their logits; ours are atomic; bad files are refused."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from conftest import FIXTURES

import nets
from utils.base import checkpoint as ckpt
from utils.base.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.base.errors import CheckpointError

ORIGINAL = FIXTURES / "original_checkpoints"
EXPECTED = json.loads((ORIGINAL / "expected.json").read_text())


def _expected_input():
    x = np.random.RandomState(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return torch.from_numpy(x)


@pytest.mark.parametrize("filename", ["preresnet20_cifar10.tar",
                                      "preresnet20_cifar10_dataparallel.tar"])
def test_original_checkpoints_load_and_give_their_logits(filename):
    model = nets.build_model(EXPECTED["model_name"], EXPECTED["num_classes"])
    checkpoint = load_weights(model, ORIGINAL / filename)
    assert checkpoint["epoch"] == EXPECTED["epoch"] and "optim_dict" in checkpoint
    with torch.no_grad():
        logits = model.eval()(_expected_input())
    torch.testing.assert_close(logits, torch.tensor(EXPECTED["logits"]), rtol=1e-4, atol=1e-4)


def test_saved_checkpoint_round_trips_and_loads_the_original_way(tmp_path):
    model = nets.build_model("preresnet20", 10)
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "best_model.tar"
    save_checkpoint(path, {"epoch": 5, "state_dict": model.state_dict(),
                           "optim_dict": optim.state_dict()})
    # the original's loader: plain torch.load and load_state_dict on a fresh network
    raw = torch.load(path, map_location="cpu")
    assert set(raw) == {"epoch", "state_dict", "optim_dict"} and raw["epoch"] == 5
    fresh = nets.build_model("preresnet20", 10)
    fresh.load_state_dict(raw["state_dict"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["best_model.tar"]  # no temporary file left


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    source = nets.build_model("resnet18", 10)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    save_checkpoint(tmp_path / "c.tar", {"epoch": 1, "state_dict": state})
    target = nets.build_model("resnet18", 10)
    load_weights(target, tmp_path / "c.tar")
    assert torch.equal(target.linear.weight, source.linear.weight)


def test_bare_state_dict_is_accepted(tmp_path):
    source = nets.build_model("mlp", 10)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = nets.build_model("mlp", 10)
    assert load_weights(target, tmp_path / "weights.pt").keys() == {"state_dict"}
    assert torch.equal(target.fc3.bias, source.fc3.bias)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last_model.tar"
    save_checkpoint(path, {"epoch": 1, "state_dict": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*No space left on device"):
        save_checkpoint(path, {"epoch": 2, "state_dict": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last_model.tar"]


def _malicious_checkpoint(path, marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(1)}, "extra": Payload()}, path)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "evil.tar", marker)
    with pytest.raises(CheckpointError, match=r"refused: .*could run code"):
        load_checkpoint(tmp_path / "evil.tar")
    assert not marker.exists()
    # the same payload as a plain pickle file
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"state_dict": {}, "x": _PicklePayload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


class _PicklePayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated(path):
    torch.save({"state_dict": {"w": torch.ones(100)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_pickle(path):
    """A checkpoint whose pickled dict has one byte changed into an opcode that does not exist:
    torch's weights-only unpickler refuses it with the words it uses for code-bearing files."""
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as damaged:
        for info, data in members:
            damaged.writestr(info, data[:2] + b"\xb4" + data[3:] if info.filename.endswith("data.pkl")
                             else data)


@pytest.mark.parametrize("make,message", [
    (lambda p: None, r"checkpoint .*missing.tar does not exist"),
    (lambda p: p.mkdir(), r"is a directory, not a file"),
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    (lambda p: p.write_text("hello, not a checkpoint"), r"is not a PyTorch checkpoint"),
    (_truncated, r"is damaged or truncated"),
    (_damaged_pickle, r"is damaged or truncated: its pickled data cannot be read"),
    (lambda p: torch.save({"epoch": 3, "model": 1}, p), r"holds no 'state_dict'.*'epoch', 'model'"),
    (lambda p: torch.save([1, 2], p), r"holds no 'state_dict'.*list"),
])
def test_bad_files_give_one_clear_line(tmp_path, make, message):
    path = tmp_path / "missing.tar"
    make(path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert "could run code" not in str(err.value)  # only for files that name code


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    save_checkpoint(tmp_path / "r18.tar", {"epoch": 1,
                                           "state_dict": nets.build_model("resnet18", 10).state_dict()})
    with pytest.raises(CheckpointError) as err:
        load_weights(nets.build_model("preresnet20", 10), tmp_path / "r18.tar",
                     what="teacher preresnet20")
    message = str(err.value)
    assert "does not fit the teacher preresnet20" in message
    assert "45 missing keys (layer1.2.bn1.weight, layer1.2.bn1.bias, layer1.2.bn1.running_mean, ...)" in message
    assert "49 unexpected keys (bn1.weight, bn1.bias, bn1.running_mean, ...)" in message


def test_checkpoint_with_another_class_count_names_the_shapes(tmp_path):
    save_checkpoint(tmp_path / "c100.tar", {"epoch": 1,
                                            "state_dict": nets.build_model("resnet18", 100).state_dict()})
    with pytest.raises(CheckpointError, match=r"2 shapes differ, checkpoint vs network "
                                              r"\(linear.weight \[100, 512\] vs \[10, 512\], "
                                              r"linear.bias \[100\] vs \[10\]\)"):
        load_weights(nets.build_model("resnet18", 10), tmp_path / "c100.tar")


def test_checkpoint_files_are_zip_archives(tmp_path):
    # the format torch.save has written since 1.6, which every loader of the original reads
    save_checkpoint(tmp_path / "c.tar", {"epoch": 0, "state_dict": {"w": torch.ones(2)}})
    assert zipfile.is_zipfile(tmp_path / "c.tar")


def test_state_dict_with_values_that_are_not_tensors_is_one_line(tmp_path):
    torch.save({"epoch": 1, "state_dict": {"fc3.weight": 3, "fc3.bias": "x"}}, tmp_path / "odd.tar")
    with pytest.raises(CheckpointError, match=r"odd.tar: state_dict entries that are not tensors "
                                              r"\(fc3.weight, fc3.bias\)$"):
        load_weights(nets.build_model("mlp", 10), tmp_path / "odd.tar")
