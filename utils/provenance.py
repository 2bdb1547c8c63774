"""What a result was made with: the effective params and the project's git commit.

    checkpoint.update(provenance(params))   # {"params": {...}, "git_commit": "3fcadfe..." or None}
"""
import functools
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


def provenance(params):
    return {"params": params.as_dict(), "git_commit": git_commit()}
