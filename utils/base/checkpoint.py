"""Reading and writing checkpoints in the original's format: {'epoch', 'state_dict', 'optim_dict', ...}.

    save_checkpoint("run/last_model.tar", {"epoch": 3, "state_dict": ..., "optim_dict": ...})
    checkpoint = load_weights(teacher, "run/best_model.tar", what="teacher resnet18")

Writes are atomic (temporary file in the same folder, then rename), so a killed run
leaves either the old or the new file. Every load is `weights_only=True`: a file that
would run code when unpickled is refused. Keys saved from `nn.DataParallel` (`module.`)
or `torch.compile` (`_orig_mod.`) wrappers load into the bare network.
"""
import collections
import contextlib
import hashlib
import io
import json
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from utils.base.errors import CheckpointError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 3  # keys named in a mismatch message


def save_checkpoint(path, checkpoint):
    """Write `checkpoint` to `path` atomically; a failed write keeps the previous file."""
    _write_atomically(path, lambda f: torch.save(checkpoint, f), "checkpoint")


def file_sha256(path):
    """Content identity of a checkpoint file: what is made from a network belongs to these exact
    weights (a synthetic set, a teacher's kept answers)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_json(path, record):
    """Write `record` as JSON to `path` atomically (a run folder's small records)."""
    text = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    _write_atomically(path, lambda f: f.write(text), "file")


def _write_atomically(path, write, what):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write {what} {path}: {exc.strerror or exc}") from exc
        raise
    _fsync_folder(folder)


def remove_partial_writes(folder):
    """Delete temporary files that a write killed half-way left in `folder` (call under the run lock)."""
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def _fsync_folder(folder):
    # makes the rename itself durable; not every platform can open a folder
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


LEGACY_PICKLES = 4  # torch's pre-1.6 format: magic number, protocol, system info, the object


def pickles_parse(path):
    """Whether the pickled part of checkpoint `path` is well-formed, opcode by opcode.

    torch's weights-only unpickler words its refusal of a damaged file and of one that names code
    alike; a file whose pickle parses was refused for what it holds, one that does not is damaged.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
            return _parse_pickles(io.BytesIO(data), len(data), 1)
        with open(path, "rb") as stream:  # read as parsed: the tensors' bytes follow the pickles
            return _parse_pickles(stream, os.path.getsize(path), LEGACY_PICKLES)
    except Exception:  # any failure to parse (bad opcode, cut short, odd zip) is damage
        return False


def _parse_pickles(stream, size, count):
    """Parse up to `count` pickles one after the other (raises on the first malformed one)."""
    for _ in range(count):
        if stream.tell() >= size:
            break  # a plain pickle file holds one
        collections.deque(pickletools.genops(stream), maxlen=0)  # parse to STOP, keep nothing
    return True


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict at `path` (a bare state_dict is wrapped as {'state_dict': ...})."""
    path = os.fspath(path)
    check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notices are not the user's business
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if pickles_parse(path):
            raise CheckpointError(f"checkpoint {path} refused: it holds objects other than tensors "
                                  "and plain data, and unpickling it could run code") from None
        raise CheckpointError(f"checkpoint {path} is damaged or truncated: its pickled data cannot "
                              "be read (a copy cut short, or bytes changed on the way)") from None
    except Exception as exc:  # torch reports damage as KeyError, EOFError, RuntimeError, OSError, ...
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint, or is damaged or "
                              f"truncated ({type(exc).__name__})") from None
    return _as_checkpoint(obj, path)


def check_file(path):
    """Raise CheckpointError unless `path` is a non-empty file (cheap: no unpickling)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")


def _as_checkpoint(obj, path):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise CheckpointError(f"checkpoint {path} holds no 'state_dict' (a dict with keys "
                          f"{sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__})")


def strip_wrapper_prefixes(state_dict):
    """Remove `module.` / `_orig_mod.` when every key carries it (DataParallel, torch.compile)."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _first(items):
    return ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")


def check_fits(model, state_dict, path, what="network"):
    """Raise CheckpointError naming missing/unexpected keys or differing shapes (first few)."""
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"checkpoint {path}: state_dict entries that are not tensors "
                              f"({_first(not_tensors)})")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if not problems:
        differ = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}"
                  for k, v in expected.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
        if differ:
            problems.append(f"{len(differ)} shapes differ, checkpoint vs {what} ({_first(differ)})")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the {what}: {'; '.join(problems)}")


def load_weights(model, path, map_location="cpu", what="network"):
    """Load the weights of the checkpoint at `path` into `model`; returns the checkpoint dict."""
    checkpoint = load_checkpoint(path, map_location)
    state_dict = strip_wrapper_prefixes(checkpoint["state_dict"])
    check_fits(model, state_dict, path, what)
    model.load_state_dict(state_dict)
    return checkpoint
