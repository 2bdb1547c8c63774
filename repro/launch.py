"""torchrun as reproduce.py starts it for `--nproc N`: the same launcher, which also ends (and so
stops its ranks) when reproduce.py dies, even by SIGKILL.

    python repro/launch.py --standalone --nproc_per_node=4 train_scratch.py --save_path RUN
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # started by path, from any folder

from torch.distributed.run import main  # noqa: E402

from utils.training.cli import stop_with_parent  # noqa: E402

if __name__ == "__main__":
    stop_with_parent()
    main()
