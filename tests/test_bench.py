"""The benchmarks stay runnable: tiny runs, and the tables they print are well formed."""
import re
import subprocess
import sys

from conftest import ROOT


def _bench(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def test_throughput_compares_three_pipelines():
    lines = _bench("throughput.py", "--model", "net", "--mode", "kd", "--images", "200",
                   "--repeats", "1", "--warmup", "0", "--workers", "0")
    rows = [re.match(r"(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)x$", line) for line in lines[2:]]
    assert [r.group(1).split(" (")[0] for r in rows] == ["reference", "ours, faithful", "ours, --fast"]
    assert rows[0].group(4) == "1.00" and all(int(r.group(2)) > 0 for r in rows)
    assert lines[0].startswith("kd net -> net, cpu, batch 128, 200 images")


def test_loader_throughput_lists_each_worker_count_and_ours():
    lines = _bench("loader_throughput.py", "--images", "300", "--repeats", "1", "--workers", "0", "1")
    names = [line.rsplit(None, 2)[0] for line in lines[2:]]
    assert names == ["torchvision DataLoader, 0 workers", "torchvision DataLoader, 1 workers",
                     "ours (device loader on cpu)"]
    assert lines[-1].endswith("1.0x")
