"""The embedded runtime: load a bundle, keep every preset's engine resident, predict with any of them.

It imports numpy, Pillow and the bundle's backend library only: devices may not have torch. Engines are
checked against the manifest's sha256 before they are loaded.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.backends.base import EngineSpec, get_backend
from edgevit.bundle import read_manifest, verify_files
from edgevit.data.scenes import preprocess_from_dict
from edgevit.errors import EdgevitError
from edgevit.validate import run_engine


@dataclass(frozen=True)
class PresetInfo:
    name: str
    resolution: int
    keep_rate: float
    gflops: float
    precision: str
    top1: float | None          # validation top-1 of this engine, from the manifest
    latency_ms: float | None    # build-host p50, when the build host matched the target
    pareto: bool
    latency_p90_ms: float | None = None   # build-host p90: what LatencyPolicy compares before live figures
    backend: str = ""                     # the backend whose engine runs this preset


@dataclass
class Prediction:
    preset: str
    indices: np.ndarray          # (N,) class indices
    labels: list                 # (N,) class names
    logits: np.ndarray           # (N, classes)


class Runtime:
    """``rt.presets`` (cheapest first), ``rt.use(name)``, ``rt.predict(images)``."""

    def __init__(self, bundle: Path, manifest: dict, backend: str, runners: dict, infos: list[PresetInfo]):
        self.bundle, self.manifest, self.backend = bundle, manifest, backend
        self.preprocess = preprocess_from_dict(manifest["preprocess"])
        self.labels = list(manifest["labels"])
        self._runners = runners
        self.presets = infos
        self._lock = threading.Lock()
        self._in_flight = 0
        self._latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=64))
        self._current = self.candidates[-1].name

    @property
    def candidates(self) -> list[PresetInfo]:
        """What a switcher may choose: the Pareto-optimal presets, cheapest first (all, if none is marked)."""
        front = [p for p in self.presets if p.pareto] or list(self.presets)
        cost = (lambda p: p.latency_ms) if all(p.latency_ms for p in front) else (lambda p: p.gflops)
        return sorted(front, key=lambda p: (cost(p), p.top1 or 0))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def recent_p90(self, min_samples: int = 5, window_s: float = 30.0) -> dict[str, float]:
        """p90 of each preset's request latencies (ms) of the last ``window_s`` seconds, where there are
        enough of them. Old readings expire, so a preset left during a slow spell can be chosen again."""
        horizon = time.monotonic() - window_s
        out = {}
        for name, d in list(self._latency.items()):
            recent = [ms for t, ms in list(d) if t >= horizon]
            if len(recent) >= min_samples:
                out[name] = float(np.percentile(recent, 90))
        return out

    @property
    def current(self) -> str:
        return self._current

    def preset(self, name: str) -> PresetInfo:
        for p in self.presets:
            if p.name == name:
                return p
        raise EdgevitError(f"unknown preset {name!r}; this bundle has: {', '.join(p.name for p in self.presets)}")

    def runner(self, name: str):
        """The loaded engine of preset ``name`` (a ``Runner``: ``infer(batch)`` on the engine's static shape)."""
        self.preset(name)
        if name not in self._runners:
            raise EdgevitError(f"preset {name} has no engine loaded (runtime closed, or opened with load_info)")
        return self._runners[name]

    def warm(self, name: str) -> None:
        """One throw-away inference on ``name``: a model that has not run lately starts with cold CPU caches
        (measured: +0.5 ms on the first request after a switch, with 1 or 2 threads alike). The switcher calls
        this off the request path, before the swap."""
        self.preset(name)
        runner = self._runners.get(name)
        if runner is not None:
            runner.infer(np.zeros(tuple(runner.input_shape), np.float32))

    def use(self, name: str) -> None:
        """Switch presets: a reference swap; a request already running finishes on its own preset."""
        self.preset(name)
        with self._lock:
            self._current = name

    def predict(self, images, preset: str | None = None) -> Prediction:
        """Class predictions for a PIL image, an image array, a list of them, or a preprocessed NCHW array."""
        name = preset or self._current          # read once: the whole request runs on this preset
        if name not in self._runners:
            self.preset(name)
            raise EdgevitError(f"preset {name} has no engine loaded (runtime closed, or opened with load_info)")
        runner = self._runners[name]
        with self._lock:
            self._in_flight += 1
        t0 = time.perf_counter()
        try:
            return self._predict(runner, name, images)
        finally:
            self._latency[name].append((time.monotonic(), (time.perf_counter() - t0) * 1e3))
            with self._lock:
                self._in_flight -= 1

    def _predict(self, runner, name: str, images) -> Prediction:
        x = self.preprocess.batch(images)
        logits = run_engine(runner, x) if len(x) else np.zeros((0, len(self.labels)), np.float32)
        idx = logits.argmax(-1)
        return Prediction(name, idx, [self.labels[i] for i in idx], logits)

    def map_scene(self, scene, out, tile: int = 128, preset: str | None = None, preview=None,
                  progress: bool = True) -> dict:
        """Classify every pixel of a multi-band raster (WetMapFormer bundles): a GeoTIFF class map with the
        source's georeference, class + 1 and 0 = nodata; memory bounded by one ``tile`` x ``tile`` tile."""
        from edgevit.runtime.mapping import map_scene

        return map_scene(self, scene, out, tile=tile, preset=preset, preview=preview, progress=progress)

    def close(self) -> None:
        for r in self._runners.values():
            r.close()
        self._runners.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _preset_info(p: dict, entry: dict, backend: str, default: bool) -> PresetInfo:
    """A manifest preset and its engine entry for one backend, as the runtime describes them. With the
    bundle's default engines the Pareto flag is the preset's own (the front of the default engines)."""
    pareto = p.get("pareto", False) if default else entry.get("pareto", p.get("pareto", False))
    return PresetInfo(p["name"], p["resolution"], p["keep_rate"], p["gflops"], entry["precision"], entry.get("top1"),
                      (entry.get("latency_ms") or {}).get("p50"), pareto, (entry.get("latency_ms") or {}).get("p90"),
                      backend)


def default_backend(manifest: dict, preset: dict) -> str:
    """The backend that runs ``preset`` when the caller names none: the build's measured choice, else the
    target's primary backend (bundles built before the choice was recorded)."""
    return (preset.get("default") or {}).get("backend") or manifest["backend"]


def _backend_label(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    return unique[0] if len(unique) == 1 else "default (" + ", ".join(unique) + ")"


def load_info(bundle, backend: str | None = None) -> Runtime:
    """A runtime with the presets' metadata and no engines loaded: for dry simulations and planning."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    infos, used = [], []
    for p in manifest["presets"]:
        b = backend or default_backend(manifest, p)
        entry = p["engines"].get(b, {})
        if entry.get("status") != "ok":
            continue
        infos.append(_preset_info(p, entry, b, backend is None))
        used.append(b)
    if not infos:
        b = backend or manifest["backend"]
        statuses = sorted({p["engines"].get(b, {}).get("status", "missing") for p in manifest["presets"]})
        others = [x for x in manifest.get("backends", []) if x != b]
        raise EdgevitError(f"bundle {bundle}: no preset has a usable {b} engine ({', '.join(statuses)})"
                           + (f"; choose another backend: {', '.join(others)}" if others else "")
                           + ("; build them on the device: edgevit engine build BUNDLE"
                              if "pending-device-build" in statuses else ""))
    infos.sort(key=lambda i: (i.gflops, -i.resolution))
    return Runtime(bundle, manifest, _backend_label(used), {}, infos)


def load(bundle, backend: str | None = None, presets: list[str] | None = None, verify: bool = True) -> Runtime:
    """Open a bundle directory and load every preset's engine (or only ``presets``).

    With no ``backend``, each preset runs the engine the build measured fastest among its backends (the
    manifest's per-preset ``default``); a backend's library is imported only if some preset uses it."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    chosen = manifest["presets"] if presets is None else [p for p in manifest["presets"] if p["name"] in presets]
    if presets is not None and len(chosen) != len(set(presets)):
        known = [p["name"] for p in manifest["presets"]]
        raise EdgevitError(f"unknown preset(s) {sorted(set(presets) - set(known))}; this bundle has: {', '.join(known)}")
    runners, infos, used = {}, [], []
    for p in chosen:
        b = backend or default_backend(manifest, p)
        entry = p["engines"].get(b)
        if entry is None:
            raise EdgevitError(f"bundle {bundle}: preset {p['name']} has no {b} engine; it has "
                               f"{', '.join(p['engines']) or 'none'}")
        if entry.get("status") != "ok":
            raise EdgevitError(f"bundle {bundle}: preset {p['name']} {b} engine is {entry.get('status')}: "
                               f"{entry.get('reason', '')}")
        spec = EngineSpec(**entry["engine"])
        if verify:
            verify_files(bundle, manifest, spec.files)
        runners[p["name"]] = get_backend(b).load(bundle, spec)
        infos.append(_preset_info(p, entry, b, backend is None))
        used.append(b)
    infos.sort(key=lambda i: (i.gflops, -i.resolution))
    return Runtime(bundle, manifest, _backend_label(used), runners, infos)
