"""Test setup: the repository root on sys.path, and the shared fixture folder."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (torch.compile, ...)")
    # a skipped check says why in the summary (e.g. no measured numbers for this machine's
    # numerics fingerprint, tests/test_effect.py), without asking for -rs
    if "s" not in (config.option.reportchars or "") and "N" not in (config.option.reportchars or ""):
        config.option.reportchars = (config.option.reportchars or "") + "s"
