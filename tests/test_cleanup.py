"""SIGTERM must remove registered partial outputs and exit 143, whichever thread the kernel delivers it to."""

import os
import subprocess
import sys
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
