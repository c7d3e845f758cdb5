"""The backend interface (Polygraphy's loader/runner split).

A ``Backend`` compiles an ONNX artifact for a profile into an engine and loads an engine into a ``Runner``.
Runners share one small interface, so validation, benchmarks and the device runtime treat every backend
alike. Nothing here imports torch: runners run on devices that do not have it.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, replace

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
    status: str = "ok"                 # or "pending-device-build": ``file`` is then the ONNX the device builds from

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def files(self) -> list[str]:
        return [self.file, *self.extra_files]


@dataclass(frozen=True)
class Candidate:
    """One way a backend can build a preset's engine; the build validates, measures and chooses among them."""

    id: str                            # unique per backend, names the engine file: int8, int8-dynamic, bf16, fp32
    precision: str                     # int8 | bf16 | fp16 | fp32
    recipe: str                        # how it is made: nncf-ptq, qdq-static, dynamic, ...
    level: int | None = None           # quantization protection level (edgevit.quantize.LEVELS)
    escalates: str | None = None       # tried only where the candidate with this id failed the gate
    floor: bool = False                # what ships when nothing faster passes (FP32)
    skip: str | None = None            # why this host cannot build or run it

    def record(self) -> dict:
        return {"id": self.id, "precision": self.precision, "recipe": self.recipe, "floor": self.floor}


class Runner:
    """One loaded engine. ``infer`` takes and returns numpy arrays of the engine's static shapes."""

    input_name: str
    input_shape: tuple
    output_shape: tuple

    def infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Backend:
    name: str = ""
    library: str = ""          # the Python package the backend needs

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

    def candidates(self, profile) -> list[Candidate]:
        """The candidates for ``profile``: its precisions in preference order, each backend recipe, FP32 last
        as the floor when the profile does not list it."""
        order = list(profile.precision) + ([] if "fp32" in profile.precision else ["fp32"])
        out = []
        for precision in order:
            for c in self.recipes(precision, profile):
                out.append(replace(c, floor=True) if c.precision == "fp32" and c.skip is None else c)
        return out

    def compile(self, onnx_path, out_dir, name: str, candidate: Candidate, calib: np.ndarray | None,
                profile) -> EngineSpec:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:  # pragma: no cover - interface
        raise NotImplementedError

    def cache_tag(self):
        """What, besides the inputs, decides the compiled output on this host (part of the cache key)."""
        return None

    def validation_runner(self, bundle_dir, spec: EngineSpec) -> Runner:
        """The runner the build validates ``spec`` with: the engine itself, unless it is built on the device."""
        return self.load(bundle_dir, spec)


_MODULES = {"onnxruntime": "edgevit.backends.onnxruntime", "openvino": "edgevit.backends.openvino",
            "tensorrt": "edgevit.backends.tensorrt"}


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise EdgevitError(f"unknown backend {name!r}; known backends: {', '.join(_MODULES)}")
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as e:  # a backend module that is not written yet or cannot import
        raise EdgevitError(f"backend {name!r} is not available here: {e}") from None
    return module.BACKEND
