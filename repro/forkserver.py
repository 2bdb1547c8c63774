"""Stages forked from one warm process, so that `import torch` is paid once per reproduce.py.

    server = ForkServer()                          # starts `python -m repro.forkserver`
    child = server.spawn(script, args, env, cwd)   # like subprocess.Popen: .pid .stdout .wait()
    server.close()

A fresh Python process spends about 5.5 s of CPU before a stage trains its first step: 3 s
importing torch and 2.5 s importing torch._dynamo, which the first optimizer of every process
imports (torch/_compile.py). On a laptop's Digits tree of 1-minute stages that is a tenth of the
work. The server imports torch, torch._dynamo and the project once and forks a child per stage;
the child is the script run as `python script args` would run it (`__main__`, its own session,
working directory, environment, thread count and stdout+stderr pipe; an uncaught exception is
printed and exits 1). reproduce.py uses it for CPU stages on Linux (repro/runner.py); CUDA is
never touched in the server (a CUDA context does not survive a fork), torchrun stages and GPU
stages still start fresh processes.

The child's command line in `ps` is the server's; its name (`ps -o comm`, top) is the script's,
and reproduce.log names its pid. A child gets SIGTERM when the server ends, and the server ends
when reproduce.py does (even by SIGKILL: its control socket closes), so no training outlives
the driver.
"""
import ctypes
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from utils.base.errors import NastyError
from utils.training.cli import PARENT_ENV, stop_with_parent

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MESSAGE = 1 << 20  # largest request: a command and its environment
PR_SET_NAME = 15


class ForkServer:
    """The driver's end: one server process, started now, that forks the stages."""

    def __init__(self, env=None):
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "repro.forkserver", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
            start_new_session=True)
        theirs.close()

    def spawn(self, script, args, env, cwd, output=None, errors=None):
        """Fork `python script args` in `cwd` with `env`: a ForkedChild; NastyError when the
        server is gone. Its stdout and stderr go to the file descriptors `output` and `errors`
        (`errors` None: with stdout); `output` None: to a pipe, the child's `.stdout`."""
        read_end, write_end = os.pipe() if output is None else (None, output)
        reply, theirs = socket.socketpair()
        request = json.dumps({"script": str(script), "args": [str(a) for a in args],
                              "env": dict(env), "cwd": str(cwd)}).encode()
        lines = ReplyLines(reply)
        try:
            socket.send_fds(self.control, [request],
                            [write_end, write_end if errors is None else errors, theirs.fileno()])
            pid = lines.next()
        except OSError:
            pid = None
        finally:
            if output is None:
                os.close(write_end)
            theirs.close()
        if pid is None:
            if read_end is not None:
                os.close(read_end)
            reply.close()
            raise NastyError(f"the fork server of reproduce.py stopped ({self.process.poll()}); run "
                             "the same command again, or add --no-fork")
        return ForkedChild(pid, read_end, lines)

    def close(self):
        self.control.close()  # the server reads end-of-file and exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ReplyLines:
    """The numbers the server writes on a reply socket, one per line (the pid, then the exit
    status, which may arrive in the same read)."""

    def __init__(self, sock):
        self.sock, self.pending = sock, b""

    def next(self, timeout=None):
        """The next number; None at end of file; TimeoutError after `timeout` seconds."""
        self.sock.settimeout(None if timeout is None else max(timeout, 1e-3))  # 0: non-blocking
        while b"\n" not in self.pending:
            try:
                data = self.sock.recv(64)
            except socket.timeout:
                raise TimeoutError from None
            if not data:
                return None
            self.pending += data
        line, self.pending = self.pending.split(b"\n", 1)
        return int(line)

    def close(self):
        self.sock.close()


class ForkedChild:
    """What SubprocessRunner reads of a Popen: pid, stdout (text lines), wait(timeout), from
    any thread (the stage's own, and the one that stops every stage)."""

    def __init__(self, pid, read_end, lines):
        self.pid, self.returncode, self.lines = pid, None, lines
        self.stdout = None if read_end is None else io.open(read_end, "r", encoding="utf-8",
                                                             errors="replace")
        self.guard = threading.Lock()

    def poll(self):
        """The exit status, or None while the child runs."""
        try:
            return self.wait(timeout=0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout=None):
        started = time.monotonic()
        if not self.guard.acquire(timeout=-1 if timeout is None else timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        try:
            if self.returncode is None:
                left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
                try:
                    code = self.lines.next(left)
                except TimeoutError:
                    raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout) from None
                # no status: the server died, which sends SIGTERM to its children
                self.returncode = -signal.SIGTERM if code is None else code
                self.lines.close()
        finally:
            self.guard.release()
        return self.returncode


# ----------------------------------------------------------------------------- the server

def serve(control):
    """Fork a child per request until the driver closes `control`; report each child's pid, then
    its exit status (negative: the signal), on the request's reply socket."""
    replies = {}
    while True:
        ready, _, _ = select.select([control], [], [], 0.1)
        reap(replies)
        if not ready:
            continue
        request, fds, _, _ = socket.recv_fds(control, MESSAGE, 3)
        if not request:
            return  # the driver is gone: the children get SIGTERM as this process exits
        *streams, reply_fd = fds
        reply = socket.socket(fileno=reply_fd)
        server, pid = os.getpid(), os.fork()
        if pid == 0:
            run_child(json.loads(request), streams, server, [control, reply, *replies.values()])
        for fd in streams:
            os.close(fd)
        try:
            reply.sendall(f"{pid}\n".encode())
        except OSError:
            pass  # that driver thread is gone; the child's status is still reaped
        replies[pid] = reply


def reap(replies):
    while replies:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        reply = replies.pop(pid, None)
        if reply is not None:
            try:
                reply.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass  # the driver stopped listening
            reply.close()


def run_child(case, streams, server, sockets):
    """In the forked child: become `python script args` and never return."""
    for sock in sockets:
        sock.close()
    os.setsid()
    become(case, streams, server)
    code = 0
    try:
        import runpy
        runpy.run_path(case["script"], run_name="__main__")
    except SystemExit as stop:
        code = exit_code(stop)
    except BaseException as error:
        import traceback
        traceback.print_exc()
        code = 130 if isinstance(error, KeyboardInterrupt) else 1
    finish(code)


def become(case, streams, server):
    """The process state a fresh `python script` would have: streams, signals, folder,
    environment, threads, argv and name; SIGTERM when the server (its driver) ends."""
    null = os.open(os.devnull, os.O_RDONLY)
    for source, target in zip((null, *streams), (0, 1, 2)):
        os.dup2(source, target)
    for fd in {null, *streams} - {0, 1, 2}:
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                               errors="backslashreplace", line_buffering=True,
                                               write_through=True) for fd in (1, 2))
    # as Python starts: Ctrl-C raises KeyboardInterrupt, SIGPIPE is ignored (a closed pipe is
    # a BrokenPipeError, not a silent death), the others are the system's defaults
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGCHLD"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    threads = case["env"].get("OMP_NUM_THREADS")
    if threads:  # OpenMP read the variable when the server started: set the count itself
        import torch
        torch.set_num_threads(int(threads))
    sys.argv = [case["script"], *case["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(case["script"]))
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, Path(case["script"]).stem.encode()[:15],
                                            0, 0, 0)
    # the driver of this child is the server, whoever started the server: SIGTERM when it ends
    # (the scripts' own call of stop_with_parent then finds nothing more to do)
    os.environ[PARENT_ENV] = str(server)
    stop_with_parent()


def exit_code(stop):
    """The status `python` gives a SystemExit: an int as is, None 0, anything else printed and 1."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1


def finish(code):
    """What the interpreter does at exit (atexit functions, logging's flush), then exit at once:
    the server's own state (its sockets, its atexit functions) is not this process's."""
    import atexit
    import logging
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a stream the script closed or whose reader is gone: nothing left to flush
    os._exit(code)


def warm_up():
    """The imports every stage pays for: torch, torch._dynamo (the first optimizer's), the
    project's networks, methods and engine. No thread is started and CUDA is not touched."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401

    import methods  # noqa: F401
    import nets  # noqa: F401
    import utils.training.engine  # noqa: F401


if __name__ == "__main__":
    warm_up()
    serve(socket.socket(fileno=int(sys.argv[1])))
