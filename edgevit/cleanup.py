"""Partial outputs and child processes that must not outlive an interrupted or finished command.

Bundles and cache entries are assembled in temporary directories and renamed when complete. Exceptions
(Ctrl-C included) remove them through ``finally`` blocks. SIGTERM gets a Python-level handler, never the
default action, and no thread blocks it: whichever thread the kernel picks, CPython's C handler only writes
the signal number to a wake-up pipe (async-signal-safe, harmless inside a native thread pool), and a
watcher thread reading that pipe removes what is registered, ends the children edgevit started, and exits
without waiting for the main thread, which may be deep inside a native call.

SIGTERM is never blocked process-wide: a signal mask is inherited by every thread and every child, forked
or executed, so a blocked SIGTERM made children that only SIGKILL could end (a library's forked telemetry
sender, trtexec, torchrun workers). A forked child also drops the handler, the wake-up pipe and the
registered paths (``os.register_at_fork``): they are the parent's, and SIGTERM ends the child by default.

``finish`` ends a command: children that libraries started and left running are ended rather than waited
for, and a watchdog ends the process if the interpreter's own shutdown is held up (a thread that a library
left blocked in a network call, say).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

_PENDING: set[str] = set()
_CHILDREN: dict[int, subprocess.Popen] = {}
_WAKEUP: list[int] = []          # the wake-up pipe's two ends, in the process that installed the handler
_EXIT_GRACE_S = 10.0             # what the interpreter's shutdown may take after a command's work is done


def register(path) -> None:
    _PENDING.add(str(path))


def unregister(path) -> None:
    _PENDING.discard(str(path))


def track(proc: subprocess.Popen) -> subprocess.Popen:
    """A child edgevit started for its own work: SIGTERM to edgevit ends it too."""
    _CHILDREN[proc.pid] = proc
    return proc


def untrack(proc: subprocess.Popen) -> None:
    _CHILDREN.pop(proc.pid, None)


def _end_children(grace_s: float = 2.0) -> None:
    procs = list(_CHILDREN.values())
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _terminate(signum: int) -> None:
    try:
        _end_children()
        for p in list(_PENDING):
            shutil.rmtree(p, ignore_errors=True)
        os.set_blocking(2, False)    # never block on a full pipe: the exit matters more than the message
        os.write(2, f"\nedgevit: stopped by signal {signum}; partial outputs removed\n".encode())
    except Exception:
        pass
    finally:
        os._exit(128 + signum)


def _forget_in_child() -> None:
    """After a fork: the child is not edgevit's command; the default action ends it on SIGTERM."""
    _PENDING.clear()
    _CHILDREN.clear()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass
    for fd in _WAKEUP:
        try:
            os.close(fd)
        except OSError:
            pass
    _WAKEUP.clear()


def install_termination_handler() -> None:
    """SIGTERM removes the registered partial outputs, ends edgevit's children and exits 143. Needs the
    main thread (where Python lets a handler be set); elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread() or _WAKEUP:
        return
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)  # CPython requires it; a full pipe must never block the C handler
    _WAKEUP.extend((rfd, wfd))

    def watch_pipe():
        try:
            data = os.read(rfd, 1)
        except OSError:
            return
        _terminate(data[0] if data else signal.SIGTERM)

    signal.signal(signal.SIGTERM, lambda signum, frame: _terminate(signum))
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    threading.Thread(target=watch_pipe, name="edgevit-sigterm", daemon=True).start()


os.register_at_fork(after_in_child=_forget_in_child)


def end_foreign_children(grace_s: float = 2.0) -> list[str]:
    """End the ``multiprocessing`` children still running that edgevit did not start (a library's sender
    blocked on an offline network): at exit, ``multiprocessing`` would join them, for ever. Their names."""
    if "multiprocessing" not in sys.modules:
        return []
    import multiprocessing

    left = [p for p in multiprocessing.active_children() if p.pid not in _CHILDREN]
    for p in left:
        p.terminate()
    for p in left:
        p.join(grace_s)
        if p.is_alive():
            p.kill()
            p.join(grace_s)
    return [p.name for p in left]


def finish(code: int | None) -> None:
    """The command's work is done: end what it did not start, and make sure the process exits with ``code``
    even if the interpreter's shutdown is held up."""
    end_foreign_children()

    def watchdog():
        time.sleep(_EXIT_GRACE_S)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else (0 if code is None else 1))

    threading.Thread(target=watchdog, name="edgevit-exit", daemon=True).start()
