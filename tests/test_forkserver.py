"""repro/forkserver.py: a forked child is the script run as `python script args` would run it, and
no child outlives its server."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

from repro.forkserver import ForkServer
from utils.base.errors import NastyError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")

SHOW = """
import os, sys, torch
print("argv", sys.argv[1:], "cwd", os.getcwd(), "path0", sys.path[0])
print("env", os.environ.get("PROBE"), "threads", torch.get_num_threads())
print("main", __name__, "session leader", os.getsid(0) == os.getpid())
import signal
print("signals", [str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGPIPE)])
print("to stderr", file=sys.stderr)
"""


@pytest.fixture(scope="module")
def server():
    started = ForkServer(dict(os.environ, OMP_NUM_THREADS="2"))
    yield started
    started.close()


def script(tmp_path, text, name="probe.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run(server, path, args=(), env=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    child = server.spawn(path, args, env, cwd or path.parent)
    output = child.stdout.read()
    return child.wait(), output


def test_a_child_is_the_script_with_its_argv_folder_environment_and_threads(server, tmp_path):
    path = script(tmp_path, SHOW)
    (tmp_path / "elsewhere").mkdir()
    code, output = run(server, path, ["--save_path", "x"], {"PROBE": "seen"}, tmp_path / "elsewhere")
    assert code == 0
    assert f"argv ['--save_path', 'x'] cwd {tmp_path / 'elsewhere'} path0 {tmp_path}" in output
    assert "env seen threads 1" in output  # OMP_NUM_THREADS of the child, not the server's 2
    assert "main __main__ session leader True" in output
    assert "to stderr" in output  # stdout and stderr on one pipe, as the runner reads them
    fresh = subprocess.run([sys.executable, path], capture_output=True, text=True, cwd=tmp_path).stdout
    signals = [line for line in fresh.splitlines() if line.startswith("signals")]
    assert signals and signals[0] in output  # SIGTERM and SIGPIPE as a fresh `python` has them


@pytest.mark.parametrize("body, code, shown", [
    ("import sys; sys.exit(3)", 3, ""),
    ("import sys; sys.exit('error: no such file')", 1, "error: no such file"),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
    ("raise KeyboardInterrupt", 130, "KeyboardInterrupt"),
    ("import atexit; atexit.register(print, 'atexit ran')", 0, "atexit ran"),
])
def test_exit_status_as_python_gives_it(server, tmp_path, body, code, shown):
    status, output = run(server, script(tmp_path, body + "\n"))
    assert status == code and shown in output


def test_a_signalled_child_reports_the_signal_and_wait_times_out_before(server, tmp_path):
    child = server.spawn(script(tmp_path, "import time; time.sleep(60)\n"), [],
                         dict(os.environ), tmp_path)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    codes = []
    waiters = [threading.Thread(target=lambda: codes.append(child.wait())) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    os.killpg(child.pid, signal.SIGTERM)  # its own session: the runner signals the group
    for waiter in waiters:
        waiter.join(timeout=30)
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]


def test_children_stop_when_the_server_dies(tmp_path):
    server = ForkServer()
    child = server.spawn(script(tmp_path, "import time; time.sleep(60)\n"), [], dict(os.environ), tmp_path)
    comm, deadline = Path(f"/proc/{child.pid}/comm"), time.time() + 10
    while comm.read_text().strip() != "probe" and time.time() < deadline:
        time.sleep(0.05)
    assert comm.read_text().strip() == "probe"  # top and `ps -o comm` show the script
    server.process.kill()  # as if reproduce.py's server were killed; its children get SIGTERM
    server.process.wait()
    assert child.wait(timeout=30) == -signal.SIGTERM
    server.close()


def test_a_child_of_the_driver_stops_with_the_server_not_by_its_driver_check(server, tmp_path):
    """reproduce.py names itself in NASTY_TEACHER_DRIVER_PID; a forked child's driver is the
    server, so the scripts' check (utils/training/cli.stop_with_parent) must not stop it."""
    body = ("import sys; sys.path.insert(0, %r)\n"
            "from utils.training.cli import stop_with_parent\n"
            "stop_with_parent(); print('still running')\n") % str(ROOT)
    code, output = run(server, script(tmp_path, body), env={"NASTY_TEACHER_DRIVER_PID": str(os.getpid())})
    assert (code, output.strip()) == (0, "still running")


def test_spawning_after_the_server_stopped_is_one_error(tmp_path):
    server = ForkServer()
    server.process.kill()
    server.process.wait()
    time.sleep(0.1)
    with pytest.raises(NastyError, match="fork server of reproduce.py stopped .*--no-fork"):
        server.spawn(script(tmp_path, "pass\n"), [], dict(os.environ), tmp_path)
    server.close()
