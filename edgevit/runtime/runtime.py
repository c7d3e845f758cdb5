"""The embedded runtime: load a bundle, keep every preset's engine resident, predict with any of them.

It imports numpy, Pillow and the bundle's backend library only: devices may not have torch. Engines are
checked against the manifest's sha256 before they are loaded.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.backends.base import Closing, EngineSpec, get_backend
from edgevit.bundle import MANIFEST, read_manifest, verify_files
from edgevit.manifest import PENDING, EngineEntry, Manifest, PresetEntry
from edgevit.data.preprocess import preprocess_from_dict
from edgevit.errors import EdgevitError
from edgevit.backends.base import run_engine

log = logging.getLogger("edgevit.runtime")


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
    probabilities: np.ndarray = None    # (N, classes): softmax of the logits
    top_k: np.ndarray = None            # (N, k) class indices, most probable first

    def top(self, k: int = 5, names: list | None = None) -> list[list[tuple]]:
        """Per image, the k most probable ``(label, probability)`` pairs."""
        order = np.argsort(-self.probabilities, axis=-1)[:, :k]
        names = names or self._names
        return [[(names[j], float(self.probabilities[i, j])) for j in row] for i, row in enumerate(order)]

    _names: list = None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Runtime(Closing):
    """``rt.presets`` (cheapest first), ``rt.use(name)``, ``rt.predict(images)``."""

    def __init__(self, bundle: Path, manifest: Manifest, backend: str, runners: dict, infos: list[PresetInfo]):
        self.bundle, self.manifest, self.backend = bundle, manifest, backend
        self.preprocess = preprocess_from_dict(manifest.preprocess)
        self.labels = list(manifest.labels)
        self._runners = runners
        self.presets = infos
        self._lock = threading.Lock()
        self._in_flight = 0
        self._latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=64))
        self._current = self.candidates[-1].name
        self._pending: dict[str, threading.Event] = {}   # presets the background loader has yet to load
        self._load_errors: dict[str, BaseException] = {}
        self._loader: threading.Thread | None = None
        self._closing = threading.Event()
        self.max_pixels: int | None = None      # a file with more pixels is refused (None: MAX_PIXELS)

    def _load_rest(self, loads: dict, log_done) -> None:
        """Load ``loads`` (preset -> function returning its runner) in a background thread, so that ``load``
        returns once the first preset is resident. A preset asked for before its turn is waited for."""
        self._pending = {name: threading.Event() for name in loads}

        def work():
            for name, make in loads.items():
                if self._closing.is_set():
                    break
                try:
                    self._runners[name] = make()
                except BaseException as e:   # raised to whoever asks for the preset
                    self._load_errors[name] = e
                self._pending[name].set()
            for event in self._pending.values():
                event.set()
            if not self._closing.is_set():
                log_done()

        self._loader = threading.Thread(target=work, name="edgevit-load", daemon=True)
        self._loader.start()
        _LOADING.add(self)

    def _stop_loading(self) -> None:
        """Let the loader finish the engine it is compiling, then stop it: a native compile still running
        when the interpreter exits aborts the process ("terminate called without an active exception")."""
        self._closing.set()
        if self._loader is not None:
            self._loader.join()
        _LOADING.discard(self)

    def wait_loaded(self, timeout: float | None = None) -> "Runtime":
        """Block until every preset's engine is resident (``load`` returns once the first one is)."""
        if self._loader is not None:
            self._loader.join(timeout)
        for name in self._load_errors:
            self._raise_load_error(name)
        return self

    def _raise_load_error(self, name: str) -> None:
        if name in self._load_errors:
            why = str(self._load_errors[name]).removeprefix(f"bundle {self.bundle}: ")
            raise EdgevitError(f"bundle {self.bundle}: preset {name} failed to load: {why}")

    def _runner(self, name: str):
        event = self._pending.get(name)
        if event is not None and not event.is_set():
            event.wait()
        self._raise_load_error(name)
        runner = self._runners.get(name)
        if runner is None:
            raise EdgevitError(f"preset {name} has no engine loaded (runtime closed, or opened with load_info)")
        return runner

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
        return self._runner(name)

    def warm(self, name: str) -> None:
        """One throw-away inference on ``name``: a model that has not run lately starts with cold CPU caches
        (measured: +0.5 ms on the first request after a switch, with 1 or 2 threads alike). The switcher calls
        this off the request path, before the swap."""
        self.preset(name)
        runner = self._runner(name) if name in self._runners or name in self._pending else None
        if runner is not None:
            runner.infer(np.zeros(tuple(runner.input_shape), np.float32))

    def use(self, name: str) -> None:
        """Switch presets: a reference swap; a request already running finishes on its own preset."""
        self.preset(name)
        with self._lock:
            self._current = name

    def predict(self, images, preset: str | None = None, *, value_range=None, preprocessed: bool = False,
                top_k: int = 5) -> Prediction:
        """Class predictions, with probabilities and the ``top_k`` classes, for: a file path, a PIL image (any
        mode), an HxW / HxWxC array, an NHWC array, or a list of these. uint8 arrays are 0..255; float arrays
        are 0..1 or 0..255 (``value_range``, else read from the values and checked). Already-normalised NCHW
        float32 input needs ``preprocessed=True``. Anything else raises ``EdgevitError`` naming what is
        expected. The bundle's own preprocessing is applied. Files are read as a viewer shows them (EXIF
        orientation) and refused above ``load(max_pixels=...)`` pixels; 16-bit images and uint16 arrays are
        scaled from 0..65535."""
        name = preset or self._current          # read once: the whole request runs on this preset
        if name not in self._runners and name not in self._pending:
            self.preset(name)
        runner = self._runner(name)
        with self._lock:
            self._in_flight += 1
        n = 0
        try:
            x = self.preprocess.batch(images, value_range=value_range, preprocessed=preprocessed,
                                      max_pixels=self.max_pixels)
            n = len(x)
            t0 = time.perf_counter()       # the engine's time: bad input and decoding are not the preset's cost
            logits = run_engine(runner, x) if n else np.zeros((0, len(self.labels)), np.float32)
        finally:
            if n:
                # Per image: an 8-image call is 8 requests of its per-image time, not one slow request.
                per_image = (time.perf_counter() - t0) * 1e3 / n
                self._latency[name].append((time.monotonic(), per_image))
            with self._lock:
                self._in_flight -= 1
        idx = logits.argmax(-1)
        probs = softmax(logits) if n else np.zeros_like(logits)
        k = max(1, min(int(top_k), logits.shape[-1]))
        top = np.argsort(-probs, axis=-1)[:, :k]
        return Prediction(name, idx, [self.labels[i] for i in idx], logits, probs, top, self.labels)

    def map_scene(self, scene, out, tile: int = 128, preset: str | None = None, preview=None,
                  progress: bool = True) -> dict:
        """Classify every pixel of a multi-band raster (WetMapFormer bundles): a GeoTIFF class map with the
        source's georeference, class + 1 and 0 = nodata; memory bounded by one ``tile`` x ``tile`` tile."""
        from edgevit.runtime.mapping import MapOptions, map_scene

        return map_scene(self, scene, out, MapOptions(tile=tile, preset=preset, preview=preview, progress=progress))

    def close(self) -> None:
        self._stop_loading()
        for r in list(self._runners.values()):
            r.close()
        self._runners.clear()


_LOADING: "weakref.WeakSet[Runtime]" = weakref.WeakSet()   # runtimes whose background loader may still run


@atexit.register
def _stop_loaders() -> None:
    # atexit runs before the interpreter tears down daemon threads: stop every loader between two engines.
    for rt in list(_LOADING):
        rt._stop_loading()


def _preset_info(p: PresetEntry, entry: EngineEntry, backend: str, default: bool) -> PresetInfo:
    """A manifest preset and its engine entry for one backend, as the runtime describes them. With the
    bundle's default engines the Pareto flag is the preset's own (the front of the default engines)."""
    pareto = bool(p.pareto if default or entry.pareto is None else entry.pareto)
    return PresetInfo(p.name, p.resolution, p.keep_rate, p.gflops, entry.precision, entry.top1,
                      entry.latency("p50"), pareto, entry.latency("p90"), backend)


def default_backend(manifest: Manifest, preset: PresetEntry, installed=None) -> str:
    """The backend that runs ``preset`` when the caller names none: the build's measured choice, else the
    target's primary backend (bundles built before the choice was recorded). With ``installed`` (a
    predicate), a backend whose library this device lacks gives way to the next of the bundle's backends
    with a usable engine, so a device with only ONNX Runtime still runs a bundle whose fastest engines
    were OpenVINO's."""
    first = preset.default_backend() or manifest.backend
    if installed is None or installed(first):
        return first
    for b in [first, *manifest.backends]:
        if b in preset.engines and preset.engines[b].ok and installed(b):
            return b
    return first


def _files_digest(manifest: Manifest, spec: EngineSpec) -> str | None:
    """One digest of every file of the engine (an IR's weights too: two engines of one graph and other
    weights must not share compiled blobs), from the manifest's sha256s; None where one is not listed."""
    import hashlib

    shas = [manifest.files.get(f) for f in spec.files]
    if not all(shas):
        return None
    return shas[0] if len(shas) == 1 else hashlib.sha256(":".join(shas).encode()).hexdigest()


def compile_cache_dir(backend: str, sha256: str) -> str | None:
    """A per-user directory for ``backend``'s compiled form of the engine whose files have ``sha256``
    ($EDGEVIT_CACHE_DIR, else $XDG_CACHE_HOME/edgevit, else ~/.cache/edgevit); None if it cannot be made.
    Keyed by the engine's content, so a rebuilt engine never meets a stale blob."""
    import os

    root = os.environ.get("EDGEVIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgevit"
    path = Path(root) / "compiled" / backend / sha256[:24]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.info("no compile cache for %s engines: cannot create %s (%s)", backend, path, e.strerror)
        return None
    return str(path)


class _Installed:
    """Whether a backend's library imports here, asked once per backend."""

    def __init__(self):
        self.known: dict[str, bool] = {}

    def __call__(self, backend: str) -> bool:
        if backend not in self.known:
            try:
                self.known[backend] = get_backend(backend).available()[0]
            except EdgevitError:
                self.known[backend] = False
        return self.known[backend]


def _backend_label(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    return unique[0] if len(unique) == 1 else "default (" + ", ".join(unique) + ")"


def load_info(bundle, backend: str | None = None) -> Runtime:
    """A runtime with the presets' metadata and no engines loaded: for dry simulations and planning."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    infos, used = [], []
    for p in manifest.presets:
        b = backend or default_backend(manifest, p)
        entry = p.engines.get(b)
        if entry is None or not entry.ok:
            continue
        infos.append(_preset_info(p, entry, b, backend is None and b == p.default_backend()))
        used.append(b)
    if not infos:
        b = backend or manifest.backend
        statuses = sorted({p.engines[b].status if b in p.engines else "missing" for p in manifest.presets})
        others = [x for x in manifest.backends if x != b]
        raise EdgevitError(f"bundle {bundle}: no preset has a usable {b} engine ({', '.join(statuses)})"
                           + (f"; choose another backend: {', '.join(others)}" if others else "")
                           + ("; build them on the device: edgevit engine build BUNDLE"
                              if PENDING in statuses else ""))
    infos.sort(key=lambda i: (i.gflops, -i.resolution))
    return Runtime(bundle, manifest, _backend_label(used), {}, infos)


def load(bundle, backend: str | None = None, presets: list[str] | None = None, verify: bool = True,
         cache: bool = True, background: bool = True, max_pixels: int | None = None) -> Runtime:
    """Open a bundle directory and load every preset's engine (or only ``presets``).

    With no ``backend``, each preset runs the engine the build measured fastest among its backends (the
    manifest's per-preset ``default``); a backend's library is imported only if some preset uses it.

    Every engine file is checked against the manifest first. The preset the runtime starts on is loaded
    before ``load`` returns; with ``background`` (the default) the others follow in a background thread,
    most accurate first, so a device serves its first request without waiting for all of them (a preset
    asked for earlier than its turn is waited for; ``rt.wait_loaded()`` waits for all). OpenVINO engines
    go through a compile cache (``cache``), so later boots import them instead of compiling them; a
    cached blob is imported only once its sha256 matches. ``max_pixels`` bounds the image files ``predict``
    decodes (default ``edgevit.data.preprocess.MAX_PIXELS``, PIL's 89.5 M)."""
    import psutil

    t0, rss0 = time.perf_counter(), psutil.Process().memory_info().rss
    bundle = _bundle_path(bundle)
    manifest = read_manifest(bundle)
    presets = _preset_names(presets)
    chosen = manifest.presets if presets is None else [p for p in manifest.presets if p.name in presets]
    if presets is not None and len(chosen) != len(set(presets)):
        known = [p.name for p in manifest.presets]
        raise EdgevitError(f"unknown preset(s) {sorted(set(presets) - set(known))}; this bundle has: {', '.join(known)}")
    loads, infos, used = {}, [], []
    pre = preprocess_from_dict(manifest.preprocess)
    shapes = ((pre.channels, pre.crop, pre.crop), len(manifest.labels))   # what every engine must take and give
    installed = _Installed()
    verified: set[str] = set()
    for p in chosen:
        b = backend or default_backend(manifest, p, installed)
        entry = _usable_entry(bundle, p, b, installed, backend is None, manifest)
        impl = get_backend(b)
        spec = checked_spec(bundle, manifest, p.name, b, entry, impl, verified if verify else None)
        sha = _files_digest(manifest, spec)
        if cache and sha and impl.compile_cache:
            spec = impl.with_compile_cache(spec, compile_cache_dir(b, sha))
        loads[p.name] = lambda impl=impl, spec=spec: _load_engine(impl, bundle, spec, shapes)
        infos.append(_preset_info(p, entry, b, backend is None and b == p.default_backend()))
        used.append(b)
    infos.sort(key=lambda i: (i.gflops, -i.resolution))
    rt = Runtime(bundle, manifest, _backend_label(used), {}, infos)
    rt.max_pixels = _max_pixels(max_pixels)
    first = rt.current if rt.current in loads else next(iter(loads), None)
    if first is not None:
        rt._runners[first] = loads.pop(first)()

    def loaded():
        log.info("loaded %s: %d presets on %s in %.2f s, +%.0f MB resident", bundle, len(rt._runners), rt.backend,
                 time.perf_counter() - t0, (psutil.Process().memory_info().rss - rss0) / 2 ** 20)

    rest = dict(sorted(loads.items(), key=lambda kv: -rt.preset(kv[0]).gflops))   # the switcher steps down
    if background and rest:
        rt._load_rest(rest, loaded)
    else:
        for name, make in rest.items():
            rt._runners[name] = make()
        loaded()
    return rt


def _bundle_path(bundle) -> Path:
    if not isinstance(bundle, (str, Path)) or not str(bundle):
        raise EdgevitError(f"bundle: expected the path of a bundle folder (str or Path), got "
                           f"{type(bundle).__name__} {str(bundle)[:80]!r}")
    return Path(bundle)


def _max_pixels(n) -> int | None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise EdgevitError(f"max_pixels={repr(n)[:40]}: expected a positive number of pixels, or None")
    return n


def _preset_names(presets) -> list[str] | None:
    """``None`` (every preset), one name, or a non-empty list of names."""
    if presets is None:
        return None
    if isinstance(presets, str):
        presets = [presets]
    if not isinstance(presets, (list, tuple, set)) or not all(isinstance(n, str) for n in presets):
        raise EdgevitError(f"presets: expected a preset name or a list of names, got {str(presets)[:120]!r}")
    if not presets:
        raise EdgevitError("presets: an empty list loads nothing; name at least one preset, or pass None for all")
    return list(presets)


def checked_spec(bundle: Path, manifest: Manifest, preset: str, b: str, entry: EngineEntry, impl,
                 verified: set | None) -> EngineSpec:
    """The engine record of ``preset`` on ``b``, its fields checked and every file its library opens
    checked against the manifest's sha256 (skipped when ``verified`` is None: ``verify=False``); a file
    several presets share (a shared engine, a kit's weights) is hashed once."""
    spec = EngineSpec.from_dict(entry.engine, f"{bundle / MANIFEST} presets[{preset}].engines.{b}.engine")
    read = impl.files_read(spec)
    if verified is not None:
        verify_files(bundle, manifest, [f for f in read if f not in verified])
        verified.update(read)
    return spec


def _load_engine(impl, bundle: Path, spec: EngineSpec, shapes: tuple):
    """The backend's runner, or an error naming the engine file where its library cannot read it (a truncated
    or foreign file loaded with ``verify=False``), or where it does not fit the manifest: the image the bundle's
    preprocessing makes, one logit per label (else a request would fail inside the library, or index past
    the labels)."""
    try:
        runner = impl.load(bundle, spec)
    except EdgevitError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise EdgevitError(f"bundle {bundle}: {impl.name} cannot load engine {spec.file}: {first} (corrupted, or "
                           f"not a {impl.name} engine for this device; load verifies the files' sha256 unless "
                           f"verify=False)") from None
    (image, classes), ins = shapes, tuple(runner.input_shape[1:])
    logits = runner.output_shape[-1] if len(runner.output_shape) else None
    # A dynamic dimension (-1, or a name) is the library's to check at run time.
    problem = None
    if all(isinstance(d, int) and d >= 0 for d in ins) and ins != image:
        problem = f"takes {ins} images where the manifest's preprocess makes {image}"
    elif isinstance(logits, int) and logits >= 0 and logits != classes:
        problem = f"gives {logits} logits for the manifest's {classes} labels"
    if problem:
        runner.close()
        raise EdgevitError(f"bundle {bundle}: engine {spec.file} {problem}; the manifest does not describe this "
                           f"engine (rebuild the bundle)")
    return runner


def _usable_entry(bundle: Path, p: PresetEntry, b: str, installed, default: bool,
                  manifest: Manifest) -> EngineEntry:
    """Preset ``p``'s engine entry on backend ``b``, or an error saying what is missing and how to get it."""
    if not installed(b):
        raise EdgevitError(f"bundle {bundle}: preset {p.name} runs on {b}, which is not installed here: "
                           f"pip install 'edgevit[{b}]'" + (" (or install any backend the bundle has: "
                                                            + ", ".join(manifest.backends) + ")"
                                                            if default else ""))
    entry = p.engines.get(b)
    if entry is None:
        raise EdgevitError(f"bundle {bundle}: preset {p.name} has no {b} engine; it has "
                           f"{', '.join(p.engines) or 'none'}")
    if not entry.ok:
        raise EdgevitError(f"bundle {bundle}: preset {p.name} {b} engine is {entry.status}: {entry.reason or ''}")
    return entry
