"""The run's logger: the console, and `<save_path>/training.log` once the folder lock is held."""
import logging
import logging.handlers
import sys
from pathlib import Path

LOGGER_NAME = "nasty"


def setup_logging(quiet=False):
    """Console logging now; file lines wait in memory until `attach_log_file` (so a run refused
    during setup leaves an existing training.log untouched). `quiet` (ranks other than 0 under
    torchrun): warnings only, which keeps one copy of each line on the console."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):  # a second run in the same process logs afresh
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    logger.addHandler(logging.handlers.MemoryHandler(capacity=10 ** 6, flushLevel=logging.CRITICAL + 1))
    return logger


def attach_log_file(logger, save_path):
    """Append to `<save_path>/training.log` from now on, starting with the buffered setup lines."""
    file_handler = logging.FileHandler(Path(save_path) / "training.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s:%(levelname)s: %(message)s"))
    for handler in list(logger.handlers):
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.setTarget(file_handler)
            handler.flush()
            logger.removeHandler(handler)
            handler.close()
    logger.addHandler(file_handler)
