"""The backend interface (Polygraphy's loader/runner split).

A ``Backend`` compiles an ONNX artifact for a profile into an engine and loads an engine into a ``Runner``.
Runners share one small interface, so validation, benchmarks and the device runtime treat every backend
alike. Nothing here imports torch: runners run on devices that do not have it.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from edgevit.errors import EdgevitError




@dataclass
class EngineSpec:
    """What ``compile`` produced: the engine file (relative to its bundle) and how it was made."""

    backend: str
    precision: str                     # int8 | fp16 | fp32
    file: str
    extra_files: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)      # runtime settings the runner must use
    quantization: dict = field(default_factory=dict)
    status: str = "ok"                 # or PENDING: ``file`` is then the ONNX the device builds from

    def to_dict(self) -> dict:
        return asdict(self)

    # Runtime-only settings: the loader sets them for this host; a bundle or a cache entry may not
    # (``cache_dir`` from a manifest would have OpenVINO write, and later import, blobs wherever it says;
    # ``host_code_allowed``: the device build's own word that a plan it has just built may run its code).
    RUNTIME_SETTINGS = ("cache_dir", "host_code_allowed")

    @classmethod
    def from_dict(cls, d, where: str) -> "EngineSpec":
        """An engine record read from a bundle or a build cache entry, its fields checked: an error naming
        ``where`` and the field instead of a TypeError from deep inside a load."""
        if not isinstance(d, dict):
            raise EdgevitError(f"{where}: expected an engine record (an object), found {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(d) - set(known)):
            raise EdgevitError(f"{where}: unknown field(s) {unknown}; an engine record has {known}")
        kinds = {"backend": str, "precision": str, "file": str, "extra_files": list, "settings": dict,
                 "quantization": (dict, type(None)), "status": str}
        for name in ("backend", "precision", "file"):
            if name not in d:
                raise EdgevitError(f"{where}: the engine record has no {name!r}")
        for name, value in d.items():
            if not isinstance(value, kinds[name]):
                raise EdgevitError(f"{where}: field {name!r} is {type(value).__name__} {str(value)[:80]!r}: "
                                   f"expected {getattr(kinds[name], '__name__', 'an object')}")
        if not all(isinstance(x, str) for x in d.get("extra_files", [])):
            raise EdgevitError(f"{where}: field 'extra_files' must list file paths (strings)")
        if taken := sorted(set(d.get("settings", {})) & set(cls.RUNTIME_SETTINGS)):
            raise EdgevitError(f"{where}: settings {taken} are chosen on the host that loads the engine, not "
                               f"read from a bundle or cache")
        return cls(**d)

    @property
    def files(self) -> list[str]:
        return [self.file, *self.extra_files]


@dataclass(frozen=True)
class Candidate:
    """One way a backend can build a preset's engine; the build validates, measures and chooses among them."""

    id: str                            # unique per backend, names the engine file: int8, int8-dynamic, bf16, fp32
    precision: str                     # int8 | bf16 | fp16 | fp32
    recipe: str                        # how it is made: nncf-ptq, qdq-static, dynamic, ...
    level: int | None = None           # quantization protection level (edgevit.build.quantize.LEVELS)
    escalates: str | None = None       # tried only where the candidate with this id failed the gate
    floor: bool = False                # what ships when nothing faster passes (FP32)
    skip: str | None = None            # why this host cannot build or run it
    source: str = "model"              # what it compiles: the exported graph, or (shared engines) "presets":
                                       # every preset's static graph, listed in a sources file, or
                                       # "graph-presets": the one graph with every preset's inputs

    def record(self) -> dict:
        return {"id": self.id, "precision": self.precision, "recipe": self.recipe, "floor": self.floor}


class Closing:
    """``close()``, also on leaving a ``with`` block: runners and the runtime hold native resources."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Runner(Closing):
    """One loaded engine. ``infer`` takes and returns numpy arrays of the engine's static shapes."""

    input_name: str
    input_shape: tuple
    output_shape: tuple

    def infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, feeds: dict) -> np.ndarray:  # pragma: no cover - interface
        """Several named inputs (shared-weight engines); the first output."""
        raise NotImplementedError

    def bind(self, feeds: dict):
        """``infer`` for a fixed set of extra inputs (one preset of a shared engine). By default they go with
        every request; a backend that can set them once, and gains by it, overrides this."""
        return lambda batch: self.run({self.input_name: batch, **feeds})


def run_engine(runner, x: np.ndarray) -> np.ndarray:
    """Logits for every row of ``x`` with a static-batch runner (the last chunk is padded)."""
    b = runner.input_shape[0]
    outs = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
        outs.append(runner.infer(np.ascontiguousarray(chunk))[:n])
    return np.concatenate(outs)


class Backend:
    name: str = ""
    library: str = ""          # the Python package the backend needs
    compile_cache: bool = False  # whether loads can import a cached compiled form (``with_compile_cache``)
    # Engines built on the target device from the bundle's kit: the module that runs the candidate pipeline
    # there (``edgevit.build.deferred`` describes what it provides), or None where engines are built here.
    device_build: str | None = None
    profile_section: dict = {}    # this backend's keys in a profile (``edgevit.fields.F`` fields)
    device_kinds: tuple | None = None  # the profile device kinds it can serve (None: any)
    tools: tuple = ()             # distributions whose versions key its engines and go into manifests
    modules: tuple = ()           # Python modules that come with its pip extra (edgevit[<name>])

    @property
    def deferred_build(self) -> bool:
        return self.device_build is not None

    def tool_names(self) -> tuple:
        return self.tools or (self.library,)

    def module_names(self) -> tuple:
        return self.modules or (self.library,)

    def available(self) -> tuple[bool, str]:
        """Whether this host can compile and run the backend, and if not, why."""
        try:
            importlib.import_module(self.library)
        except ImportError as e:
            return False, f"{self.library} is not installed ({e}): pip install 'edgevit[{self.library}]'"
        return True, ""

    def recipes(self, precision: str, profile) -> list[Candidate]:
        """This backend's ways of building ``precision`` engines, best first (a skipped one says why)."""
        if precision == "fp32":
            return [Candidate("fp32", "fp32", "fp32")]
        return [Candidate(precision, precision, precision, skip=f"{self.name} does not build {precision} engines")]

    def shared_recipes(self, precision: str, profile) -> list[Candidate]:
        """Recipes for a shared-weight engine (every preset in one graph, dynamic shapes inside): FP32 unless
        a backend offers more. Calibrated INT8 is fitted to one preset's activations, so it is not one."""
        if precision == "fp32":
            return self.recipes(precision, profile)
        return [Candidate(precision, precision, precision, skip=f"{self.name} builds no {precision} shared-weight "
                                                                f"engine")]

    def candidates(self, profile, shared: bool = False) -> list[Candidate]:
        """The candidates for ``profile``: its precisions in preference order, each backend recipe, FP32 last
        as the floor when the profile does not list it."""
        order = list(profile.precision) + ([] if "fp32" in profile.precision else ["fp32"])
        recipes = self.shared_recipes if shared else self.recipes
        out = []
        for precision in order:
            for c in recipes(precision, profile):
                out.append(replace(c, floor=True) if c.precision == "fp32" and c.skip is None else c)
        return out

    def compile(self, onnx_path, out_dir, name: str, candidate: Candidate, calib: np.ndarray | None,
                profile) -> EngineSpec:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:  # pragma: no cover - interface
        raise NotImplementedError

    def files_read(self, spec: EngineSpec) -> list[str]:
        """Every bundle file loading ``spec`` opens, so a load can check each against the manifest's sha256:
        the engine's files and a shared engine's preset inputs. A backend whose library opens more by itself
        (OpenVINO: the weights beside the IR) says so, or refuses a record that does not list them."""
        shared = spec.settings.get("shared")
        inputs = shared.get("inputs") if isinstance(shared, dict) else None
        return spec.files + ([inputs] if isinstance(inputs, str) and inputs not in spec.files else [])

    def with_compile_cache(self, spec: EngineSpec, cache_dir: str | None) -> EngineSpec:
        """``spec`` loading through a compiled-model cache in ``cache_dir``, where the backend has one (a later
        load imports the compiled engine instead of compiling it again). Default: no such cache."""
        return spec

    def cache_tag(self):
        """What, besides the inputs, decides the compiled output on this host (part of the cache key)."""
        return None

    def validation_runner(self, bundle_dir, spec: EngineSpec) -> Runner:
        """The runner the build validates ``spec`` with: the engine itself, unless it is built on the device."""
        return self.load(bundle_dir, spec)

    def validation_notes(self, bundle_dir, spec: EngineSpec, checks, preset: str) -> dict:
        """Fields a candidate's record adds after its check at ``preset`` (``checks``: ``pipeline.Checks``): an
        engine validated on another runtime than its own says which, and what else it was checked on."""
        return {}


_REGISTRY: dict[str, object] = {"openvino": "edgevit.backends.openvino", "onnxruntime": "edgevit.backends.onnxruntime",
                                "tensorrt": "edgevit.backends.tensorrt"}   # name -> Backend, or its module's path


def register_backend(backend: "Backend") -> "Backend":
    """Add a backend: profiles may then name it, and build, load and bench use it like the built-in ones."""
    if not backend.name:
        raise ValueError("a backend needs a name")
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise EdgevitError(f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    if isinstance(entry, Backend):
        return entry
    try:
        module = importlib.import_module(entry)
    except ImportError as e:  # a backend module that is not written yet or cannot import
        raise EdgevitError(f"backend {name!r} is not available here: {e}") from None
    return module.BACKEND
