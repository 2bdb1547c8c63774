"""One process per run folder: the lock every writer of a folder (a script, reproduce.py, a
synthesis) holds while it writes there."""
import contextlib
import fcntl
import os
from pathlib import Path

from utils.base.errors import NastyError


class RunLock:
    """One training process per run folder: an exclusive flock on `<save_path>/.lock`.

    The kernel drops the lock when its process dies, even by SIGKILL, so a stale file from
    a killed run never blocks a new one; the file holds the owner's pid for the message.
    A run refused after taking the lock (a resume checkpoint that does not fit) leaves the
    folder as it found it: unless `keep()` was called (the run has started writing), leaving
    removes the file when this process created it, else puts its earlier bytes back.
    """

    def __init__(self, save_path):
        self.path = Path(save_path) / ".lock"
        self.fd = None
        self.created, self.previous, self.kept = False, b"", False

    def __enter__(self):
        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise NastyError(f"{self.path.parent}: another process (pid {owner}) is training in "
                                 "this folder; wait for it or stop it first") from None
            if self._still_the_file(fd):
                break
            os.close(fd)  # its owner removed it before we locked it: lock the file there now
        self.created, self.kept = created, False
        self.previous = b"" if created else _read_all(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def _open(self):
        """(descriptor, whether this call created the file)."""
        while True:
            with contextlib.suppress(FileExistsError):
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            try:
                return os.open(self.path, os.O_RDWR), False
            except FileNotFoundError:
                continue  # removed in between by the process that held it

    def _still_the_file(self, fd):
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def keep(self):
        """The run writes into the folder from now on: the lock file stays when it ends."""
        self.kept = True

    def __exit__(self, *exc):
        if not self.kept:  # still holding the flock, so no other process can be using the file
            if self.created:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, self.previous, 0)
        os.close(self.fd)  # closing releases the flock
        self.fd = None


def _read_all(fd):
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


@contextlib.contextmanager
def waiting_lock(path, on_wait=None):
    """An exclusive flock on the file `path`, waiting for whoever holds it: for work that several
    runs share and one does (a synthetic set beside its teacher). `on_wait(owner pid)` is called
    once when the lock is taken. The file stays (removing it could let two processes lock two
    files of one name)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if on_wait is not None:
                on_wait(os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
