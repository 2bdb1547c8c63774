"""The benchmarks stay runnable: tiny runs, and the tables they print are well formed."""
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT


def _bench(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


@pytest.mark.slow
def test_throughput_compares_three_pipelines():
    lines = _bench("throughput.py", "--model", "net", "--mode", "kd", "--images", "200",
                   "--repeats", "1", "--warmup", "0", "--workers", "0")
    rows = [re.match(r"(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)x$", line) for line in lines[2:]]
    assert [r.group(1).split(" (")[0] for r in rows] == ["reference", "ours, faithful", "ours, --fast"]
    assert rows[0].group(4) == "1.00" and all(int(r.group(2)) > 0 for r in rows)
    assert lines[0].startswith("kd net -> net, cpu, batch 128, 200 images")


@pytest.mark.slow
def test_loader_throughput_lists_each_worker_count_and_ours():
    lines = _bench("loader_throughput.py", "--images", "300", "--repeats", "1", "--workers", "0", "1")
    names = [line.rsplit(None, 2)[0] for line in lines[2:]]
    assert names == ["torchvision DataLoader, 0 workers", "torchvision DataLoader, 1 workers",
                     "ours (device loader on cpu)"]
    assert lines[-1].endswith("1.0x")


def test_jobs_bench_copies_the_tracked_configs_and_compares_weights(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import jobs
    jobs.copy_configs("experiments/Digits", tmp_path)
    copied = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("params.json"))
    assert len(copied) == 5 and not any("seed_" in c or "sweep_" in c for c in copied)
    one = {"run": {"w": torch.ones(2)}}
    runs = {"1x1": (1, one), "2x1": (1, {"run": {"w": torch.ones(2)}}), "1x2": (2, one)}
    command = ["python", "reproduce.py", "x"]
    rows = [("1x1", 1, 1, "critical", 100.0, 90.0, command), ("2x1", 2, 1, "critical", 50.0, 45.0, command),
            ("1x2", 1, 2, "critical", 80.0, 80.0, command)]
    jobs.print_table(rows, runs, type("A", (), {"tree": "t", "seeds": [0]}))
    out = capsys.readouterr().out
    assert "| 2 | 1 | critical | 0.8 min (50 s) | 45 s | 1.11 | 2.00x | 1x1 |" in out
    assert "| 1 | 2 | critical | 1.3 min (80 s) | 80 s | 1.00 | 1.25x | — |" in out
    assert jobs.parse_setting("2x1:plan") == (2, 1, "plan")
    assert jobs.parse_setting("1x2") == (1, 2, "critical")


@pytest.mark.slow
def test_step_profile_gives_the_fixed_batch_rate_and_the_top_operators():
    lines = _bench("step_profile.py", "--model", "net", "--steps", "2", "--warmup", "1", "--top", "3")
    assert lines[0].startswith(f"numerics: torch {torch.__version__}, cpu ") and "net, batch 128" in lines[0]
    assert re.fullmatch(r"fixed random batch: 2 steps in [\d.]+ s = [\d,]+ images/s", lines[1])
    assert lines[2].startswith("self cpu time by operator")
    shares = [float(re.match(r"\s+([\d.]+)%  aten::\w+|\s+([\d.]+)%", line).group(1) or 0) for line in lines[3:]]
    assert len(shares) == 3 and shares == sorted(shares, reverse=True) and sum(shares) <= 100.0


@pytest.mark.slow
def test_gpu_check_without_cuda_says_so_in_one_line_and_names_the_dry_run(tmp_path):
    if torch.cuda.is_available():
        return  # the check itself runs there (bench/gpu_check.py --out DIR)
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == ("error: --device cuda: this machine has no usable CUDA device "
                                     "(use --device cpu --tiny for the dry run)")
    assert not (tmp_path / "out").exists()  # nothing written
