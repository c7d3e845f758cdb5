"""Temporary directories that must not outlive an interrupted build.

Bundles and cache entries are assembled in temporary directories and renamed when complete. Exceptions
(Ctrl-C included) remove them through ``finally`` blocks. SIGTERM is different: delivered asynchronously it
interrupts whichever thread the kernel picks, and native thread pools (TBB, OpenMP) did not survive that
here (SIGSEGV mid-build). So SIGTERM is blocked before any library starts a thread, every later thread
inherits the block, and one watcher thread receives it synchronously, removes what is registered and exits.

Some native libraries start threads that unblock signals again (CI saw a build die of the default action,
exit -15, with the block in place). So SIGTERM also gets a Python-level handler, never the default action:
whichever thread the kernel picks, CPython's C handler only writes the signal number to a wake-up pipe, and
a second watcher thread reading that pipe does the same clean-up, without waiting for the main thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading

_PENDING: set[str] = set()


def register(path) -> None:
    _PENDING.add(str(path))


def unregister(path) -> None:
    _PENDING.discard(str(path))


def _terminate(signum: int) -> None:
    for p in list(_PENDING):
        shutil.rmtree(p, ignore_errors=True)
    try:  # never block on a full pipe: the exit matters more than the message
        os.set_blocking(2, False)
        os.write(2, f"\nedgevit: stopped by signal {signum}; partial outputs removed\n".encode())
    except OSError:
        pass
    finally:
        os._exit(128 + signum)


def install_termination_handler() -> None:
    """Call early, before torch/OpenVINO/ONNX Runtime create their threads."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def watch():
        _terminate(signal.sigwait({signal.SIGTERM}))

    threading.Thread(target=watch, name="edgevit-sigterm", daemon=True).start()
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal and set_wakeup_fd only work in the main thread
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)  # CPython requires it; a full pipe must never block the C handler

    def watch_pipe():
        data = os.read(rfd, 1)
        _terminate(data[0] if data else signal.SIGTERM)

    signal.signal(signal.SIGTERM, lambda signum, frame: _terminate(signum))
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    threading.Thread(target=watch_pipe, name="edgevit-sigterm-pipe", daemon=True).start()
