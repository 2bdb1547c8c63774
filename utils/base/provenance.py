"""What a result was made with: the effective params, the project's git commit, and the numerics
fingerprint of the machine that computed it.

    checkpoint.update(provenance(params, device, world_size))
    # {"params": {...}, "git_commit": "3fcadfe..." or None,
    #  "numerics": {"torch": "2.14.1+cu130", "device": "cpu", "cpu_capability": "AVX2", "threads": 1}}

The same seed and config give other floats, and after a few epochs other accuracies, when any
part of the fingerprint changes: the PyTorch build, the device kind, the CPU's vector instruction
set (AVX2 and AVX-512 kernels sum in other orders) or the GPU model, the number of intra-op threads,
the number of processes. Exact numbers are only comparable between runs with the same fingerprint;
the same fingerprint is necessary for equal numbers, not sufficient (oneDNN and cuDNN pick kernels by
finer traits), so the CPU model and the cuDNN version are recorded beside it, outside its line.
"""
import functools
import subprocess
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_commit():
    """The commit of the project's checkout ('+dirty' with uncommitted changes); None outside git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def numerics(device=None, world_size=1):
    """The facts that decide a run's floats on `device` (default: the CPU), as a dict."""
    device = torch.device("cpu") if device is None else torch.device(device)
    facts = {"torch": str(torch.__version__), "device": device.type}  # TorchVersion does not unpickle weights-only
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cudnn"] = torch.backends.cudnn.version()
    else:
        facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    facts["threads"] = torch.get_num_threads()
    if world_size > 1:
        facts["processes"] = world_size
    facts["cpu_model"] = cpu_model()  # beside the fingerprint line, not in it
    return facts


@functools.lru_cache(maxsize=1)
def cpu_model():
    """The CPU's model name (Linux /proc/cpuinfo; None where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else None


def fingerprint_text(facts):
    """One line for tables and logs: 'torch 2.14.1+cu130, cpu AVX2, 1 thread'."""
    where = facts.get("gpu") if facts.get("device") == "cuda" else facts.get("cpu_capability")
    threads = facts.get("threads")
    text = f"torch {facts.get('torch')}, {facts.get('device')} {where}"
    text += f", {threads} thread{'s' if threads != 1 else ''}"
    if facts.get("processes", 1) > 1:
        text += f", {facts['processes']} processes"
    return text


def provenance(params, device=None, world_size=1):
    return {"params": params.as_dict(), "git_commit": git_commit(),
            "numerics": numerics(device, world_size)}
