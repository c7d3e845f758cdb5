"""Resident memory of a set of engines, measured in a fresh process.

What a device pays to keep presets resident is the growth of a process's resident set when their engines
are loaded and run, not the size of their files: OpenVINO packs weights for its kernels, ONNX Runtime keeps
arenas, a shared-weight engine may pack a weight again per shape. The figure depends on what else the
process did, so each set is measured in a new interpreter (``python -m edgevit.build.resident``) that imports the
backend's library first (its own cost is not the engines'), takes the resident set as its baseline, then
loads each engine in turn and runs it once. Engines load as the runtime loads them, through a compile cache
that an earlier process filled: a compiled form can hold more than the compiling did (OpenVINO branches
engines did, 2,260 MB against 449 MB), and a device pays the warm figure at every start but its first. Presets of a shared-weight engine load that engine once, as the
runtime does, so the set's growth is what the device holds with every preset loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from edgevit.errors import EdgevitError
from edgevit.measure import resident_mb

TIMEOUT_S = 1800     # a fresh process compiling twelve DeiT-S engines stays well inside this
UNKNOWN_BACKEND = 3  # the child's exit code when it cannot make the backend
HOW = ("fresh process, compile cache warm as on a device's every start but its first: growth of the proportional "
       "set size (PSS; RSS where the OS gives none) after the backend's import, each engine loaded and run once")


@dataclass
class Resident:
    """One engine set's memory: ``total_mb`` with every engine loaded, ``added_mb`` per engine as it was
    loaded after those before it (on a shared engine the first preset carries the weights)."""

    backend: str
    total_mb: float
    added_mb: dict
    baseline_mb: float

    def to_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()
                if k != "added_mb"} | {"added_mb": {k: round(v, 1) for k, v in self.added_mb.items()}}


def measure(bundle_dir: Path, backend: str, specs: dict, threads: int | None = None) -> Resident:
    """``specs``: label -> ``EngineSpec`` (files relative to ``bundle_dir``), loaded in that order, as the
    runtime loads them by default: through the compile cache, warm (a first process fills it), which is what
    a device holds at every start but its first."""
    import tempfile

    from edgevit.backends.base import get_backend

    impl = get_backend(backend)
    extra = {"threads": threads} if threads else {}
    with tempfile.TemporaryDirectory(prefix="edgevit-resident-") as cache:
        if impl.compile_cache:
            specs = {k: impl.with_compile_cache(s, cache) for k, s in specs.items()}
        job = {"bundle": str(bundle_dir), "backend": backend, "module": type(impl).__module__,
               "class": type(impl).__qualname__,
               "specs": {k: {**s.to_dict(), "settings": {**s.settings, **extra}} for k, s in specs.items()}}
        if impl.compile_cache:
            _child(job, backend)          # fills the cache: the first start compiles
        return _child(job, backend)


def _child(job: dict, backend: str) -> Resident:
    from edgevit import cleanup

    proc = cleanup.track(subprocess.Popen([sys.executable, "-m", "edgevit.build.resident"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        out, err = proc.communicate(json.dumps(job), timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise EdgevitError(f"measuring the resident memory of {backend}'s engines took over {TIMEOUT_S} s")
    finally:
        cleanup.untrack(proc)
    if proc.returncode == UNKNOWN_BACKEND:
        raise EdgevitError(f"{backend} is registered in the building process only, and a fresh process cannot "
                           f"make it ({(err or '').strip()[-200:]}): register it at the import of its module "
                           f"to have its memory measured")
    if proc.returncode != 0:
        tail = (err or "").strip().splitlines()[-1:] or ["no message"]
        raise EdgevitError(f"measuring the resident memory of {backend}'s engines failed (exit {proc.returncode}): "
                           f"{tail[0][:300]}")
    got = json.loads(out.strip().splitlines()[-1])
    return Resident(backend, got["total_mb"], got["added_mb"], got["baseline_mb"])


def _backend(job: dict):
    """The backend by name; one registered by a plugin is made from its class, found by its module."""
    from edgevit.backends.base import get_backend, register_backend

    try:
        return get_backend(job["backend"])
    except EdgevitError:
        pass
    try:
        import importlib

        cls = importlib.import_module(job["module"])
        for part in job["class"].split("."):
            cls = getattr(cls, part)
        backend = cls()
        register_backend(backend)
        return get_backend(job["backend"])
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(UNKNOWN_BACKEND)


def _main() -> None:
    import importlib

    import numpy as np

    from edgevit.backends.base import EngineSpec

    job = json.loads(sys.stdin.read())
    backend = _backend(job)
    importlib.import_module(backend.library)
    baseline = before = resident_mb()
    added, runners = {}, []
    for label, spec in job["specs"].items():
        runner = backend.load(Path(job["bundle"]), EngineSpec(**spec))
        runner.infer(np.zeros(tuple(runner.input_shape), np.float32))   # the runtime's own warm-up
        runners.append(runner)            # kept: the set is resident together
        now = resident_mb()
        added[label], before = now - before, now
    print(json.dumps({"total_mb": before - baseline, "added_mb": added, "baseline_mb": baseline}))


if __name__ == "__main__":
    _main()
