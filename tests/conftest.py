"""Test setup: the repository root on sys.path, and the shared fixture folder."""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # one pytest-xdist worker per core: each worker, and every script it starts, one intra-op
    # thread, so that the workers do not oversubscribe the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (torch.compile, ...)")
    # a skipped check says why in the summary (e.g. no measured numbers for this machine's
    # numerics fingerprint, tests/test_effect.py), without asking for -rs
    if "s" not in (config.option.reportchars or "") and "N" not in (config.option.reportchars or ""):
        config.option.reportchars = (config.option.reportchars or "") + "s"


# the longest files first: with pytest-xdist (pytest.ini: one worker per core, whole files per
# worker), the Digits chain of test_effect.py and the SLURM cluster of test_slurm.py run while
# the other workers take the rest
FIRST_FILES = ("test_effect.py", "test_slurm.py", "test_distributed.py", "test_kill.py", "test_reliability.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = Path(str(item.fspath)).name
        return FIRST_FILES.index(name) if name in FIRST_FILES else len(FIRST_FILES)
    items.sort(key=rank)  # stable: the order inside a file, and of the other files, is kept
