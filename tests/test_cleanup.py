"""SIGTERM must remove registered partial outputs and exit 143, whichever thread the kernel delivers it to."""

import os
import subprocess
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import signal, sys, threading, time, tempfile
from edgevit import cleanup
cleanup.install_termination_handler()
d = tempfile.mkdtemp(dir=sys.argv[1]); cleanup.register(d)
ready = threading.Event()
def rogue():  # a native pool thread that unblocked signals, as some libraries' threads do
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    ready.set(); time.sleep(60)
t = threading.Thread(target=rogue, daemon=True); t.start(); ready.wait()
target = t.ident if sys.argv[2] == "rogue" else None
signal.pthread_kill(target, signal.SIGTERM) if target else __import__("os").kill(__import__("os").getpid(), 15)
time.sleep(30)
print("survived")
"""


def _run(tmp_path, where):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), where], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc


def test_sigterm_to_a_thread_that_unblocked_it(tmp_path):
    proc = _run(tmp_path, "rogue")
    assert proc.returncode == 143, proc.stderr
    assert "partial outputs removed" in proc.stderr
    assert "survived" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_sigterm_to_the_process(tmp_path):
    proc = _run(tmp_path, "process")
    assert proc.returncode == 143, proc.stderr
    assert list(tmp_path.iterdir()) == []


CHILDREN = r"""
import multiprocessing as mp, os, signal, subprocess, sys, time
from edgevit import cleanup
cleanup.install_termination_handler()
cleanup.register(sys.argv[1])
def forked():
    time.sleep(60)
p = mp.get_context("fork").Process(target=forked, daemon=True); p.start()
q = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
time.sleep(0.5)
print(p.pid, q.pid, flush=True)
time.sleep(60)
"""


def _status(pid: int) -> dict:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_children_neither_inherit_a_blocked_sigterm_nor_the_handler_and_term_ends_them(tmp_path):
    """A blocked SIGTERM is inherited by every child, forked or executed: a library's forked sender, trtexec or
    a torchrun worker could then be ended by SIGKILL alone."""
    keep = tmp_path / "partial"
    keep.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CHILDREN, str(keep)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        forked, spawned = map(int, proc.stdout.readline().split())
        term = 1 << (signal.SIGTERM - 1)
        assert not int(_status(proc.pid)["SigBlk"], 16) & term            # the command itself: not blocked
        for pid in (forked, spawned):
            s = _status(pid)
            assert not int(s["SigBlk"], 16) & term, (pid, s["SigBlk"])
            assert not int(s["SigCgt"], 16) & term, (pid, s["SigCgt"])    # default action: TERM ends it
        os.kill(forked, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(forked) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(forked)
        assert keep.is_dir() and proc.poll() is None    # the child's TERM is not the parent's
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 143
        assert not keep.exists()
    finally:
        proc.kill()
        proc.wait()
    os.kill(spawned, signal.SIGTERM) if _alive(spawned) else None


def _alive(pid: int) -> bool:
    try:
        return _status(pid).get("State", "Z").split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


TRACKED = r"""
import subprocess, sys, time
from edgevit import cleanup
cleanup.install_termination_handler()
q = cleanup.track(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
print(q.pid, flush=True)
time.sleep(60)
"""


def test_sigterm_ends_the_children_edgevit_started():
    proc = subprocess.Popen([sys.executable, "-c", TRACKED], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 143
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


HELD = r"""
import multiprocessing as mp, sys, threading, time
from edgevit import cleanup
cleanup._EXIT_GRACE_S = 1.0
def sender():          # a library's child, blocked on an offline network: multiprocessing joins it at exit
    time.sleep(600)
mp.get_context("fork").Process(target=sender).start()
threading.Thread(target=time.sleep, args=(600,)).start()   # a non-daemon thread, joined at exit
print("work done", flush=True)
cleanup.finish(3)
sys.exit(3)
"""


def test_a_finished_command_exits_whatever_a_library_left_running():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HELD], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3 and "work done" in proc.stdout, proc.stderr
    assert time.monotonic() - t0 < 30
