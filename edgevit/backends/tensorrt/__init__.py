"""TensorRT: engines for Jetson Orin and desktop GPUs, built from explicit-precision ONNX.

One package holds everything TensorRT: this backend (candidates, compile, runner), ``build`` (trtexec and
Python-API engine builds), ``device_build`` (the kit, the on-device build and its validation), ``gpu``
(GPU, TensorRT and L4T facts) and ``cuda_memory``. ``compile`` always writes the ONNX TensorRT builds from
(Q/DQ for INT8, FP16 types for FP16), and the build validates that file with ONNX Runtime on the CPU
before any GPU is involved. The spec it returns is ``pending-device-build``: ``device_build`` builds the
engines, at the end of ``edgevit build`` where TensorRT and a GPU matching the target are present, else on
the device from the bundle's kit (``edgevit engine build``), so both go through one code path. Loading an
engine checks the TensorRT version, GPU and L4T release it was built for (``gpu``).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np

from edgevit.backends.base import PENDING, Backend, Candidate, EngineSpec, Runner
from edgevit.backends.tensorrt.build import build_settings, shell_line, trtexec_command
from edgevit.errors import EdgevitError
from edgevit.schema import F

KIT_DIR = Path("kit") / "tensorrt"
ENGINE_DIR = Path("engines") / "tensorrt"
TIMING_CACHE = KIT_DIR / "timing.cache"


def artifact_paths(name: str, candidate_id: str) -> tuple[Path, Path]:
    """(ONNX the engine is built from, engine file), relative to the bundle."""
    return KIT_DIR / f"{name}.{candidate_id}.onnx", ENGINE_DIR / f"{name}.{candidate_id}.plan"


def write_artifact(fp32_onnx, out: Path, precision: str, calib, level, profile) -> dict:
    """The explicit-precision ONNX for ``precision``: what TensorRT builds from and ORT validates."""
    from edgevit.quantize import convert_fp16, quantize_onnxruntime

    out.parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        return quantize_onnxruntime(fp32_onnx, out, calib, level, profile.calibration["method"], profile.batch,
                                    tensorrt=True)
    if precision == "fp16":
        return convert_fp16(fp32_onnx, out)
    shutil.copyfile(fp32_onnx, out)
    return {}


def _numpy_dtype(trt, dtype) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as e:
        raise EdgevitError(f"engine tensor type {dtype} has no numpy equivalent ({e})") from None


class TensorRTRunner(Runner):
    """One deserialized engine, one execution context, device buffers allocated once."""

    def __init__(self, engine_path, settings: dict):
        import tensorrt as trt

        from edgevit.backends.tensorrt.cuda_memory import device_memory

        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        if settings.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the lean runtime travels inside the engine
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EdgevitError(f"TensorRT {trt.__version__} could not deserialize {engine_path}; rebuild it on this "
                               f"device with: edgevit engine build BUNDLE --force")
        self.context = self.engine.create_execution_context()
        self.mem = device_memory()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgevitError(f"{engine_path}: expected one input and one output, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.output_shape = tuple(self.engine.get_tensor_shape(self.output_name))
        self.input_dtype = _numpy_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _numpy_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self._in, in_ptr = self.mem.alloc(self.input_shape, self.input_dtype)
        self._out, out_ptr = self.mem.alloc(self.output_shape, self.output_dtype)
        self.context.set_tensor_address(self.input_name, in_ptr)
        self.context.set_tensor_address(self.output_name, out_ptr)
        self._lock = threading.Lock()  # an execution context serves one inference at a time

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if batch.shape != self.input_shape:
            raise EdgevitError(f"engine input is {self.input_shape}, got {batch.shape}")
        with self._lock:
            self.mem.to_device(self._in, batch)
            if not self.context.execute_async_v3(self.mem.stream_handle):
                raise EdgevitError("TensorRT execute_async_v3 failed")
            out = self.mem.to_host(self._out)
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        for buf in (getattr(self, "_in", None), getattr(self, "_out", None)):
            if buf is not None:
                self.mem.free(buf)
        self._in = self._out = None
        self.context = self.engine = None


class TensorRTBackend(Backend):
    name = "tensorrt"
    library = "tensorrt"
    deferred_build = True
    device_kinds = ("gpu", "jetson")
    profile_section = {
        "version": F(str, "10", choices=("10", "11")),
        "workspace_mb": F(int, 4096, min=16),
        "builder_optimization_level": F(int, 3, min=0, max=5),
        "timing_cache": F(bool, True),
        "dla_core": F((int, type(None)), None, min=0, max=1),
        "gpu_fallback": F(bool, True),
        "hardware_compatibility": F(str, "none", choices=("none", "ampere_plus", "same_compute_capability")),
        "version_compatible": F(bool, False),
        "int8_if_faster": F(bool, False),   # fp16 profiles: also build INT8 on the device, keep it where faster
    }

    def build_deferred(self, bundle_dir, entries, profile, vx, vy, refs, measure: bool, log) -> dict:
        from edgevit.backends.tensorrt.device_build import defer

        return defer(self, Path(bundle_dir), entries, profile, vx, vy, refs, measure, log)

    def record_deferred(self, manifest: dict, result: dict) -> None:
        from edgevit.backends.tensorrt.device_build import record_device_build

        record_device_build(manifest, result["summary"], result["reason"])

    def pending_note(self, manifest: dict, result: dict, bundle, target: str) -> str | None:
        from edgevit.backends.tensorrt.device_build import pending_note

        return pending_note(manifest, result, Path(bundle), target)

    def recipes(self, precision, profile) -> list[Candidate]:
        if precision == "int8":
            return [Candidate("int8", "int8", "explicit Q/DQ", level=0),
                    Candidate("int8-protected", "int8", "explicit Q/DQ (+ head, attention, selection in fp32)",
                              level=1, escalates="int8")]
        if precision in ("fp16", "fp32"):
            return [Candidate(precision, precision, "strongly typed" if precision == "fp16" else "fp32")]
        return super().recipes(precision, profile)

    def available(self) -> tuple[bool, str]:
        # The kit (explicit-precision ONNX validated on ORT, settings, trtexec lines) can be made anywhere;
        # whether the engine itself is built here is ``deferred()``.
        return True, ""

    def deferred(self) -> str | None:
        """Why engines cannot be built on this host (None: they can)."""
        if os.environ.get("EDGEVIT_TENSORRT_DEFER"):
            return "EDGEVIT_TENSORRT_DEFER is set"
        from edgevit.backends.tensorrt.gpu import tensorrt_ready

        ok, why = tensorrt_ready()
        return None if ok else why

    def compile(self, onnx_path, out_dir, name, candidate, calib, profile) -> EngineSpec:
        """The kit entry for one preset: explicit-precision ONNX and build settings. The engine itself is built
        by ``edgevit.backends.tensorrt.device_build`` (on this host at the end of the build when it can, else on the device),
        so engines built here and on a Jetson come from one code path."""
        precision = candidate.precision
        settings = build_settings(profile, precision)
        settings["recipe"] = candidate.recipe
        out_dir = Path(out_dir)
        quant = self._artifact(onnx_path, out_dir, name, candidate.id, precision, calib, candidate.level, profile,
                               settings)
        extra = []
        if precision == "fp16" and profile.tensorrt.get("int8_if_faster"):
            # ARCHITECTURE §3: INT8 is not always faster than FP16 for ViTs on GPUs; the device measures both.
            cand = build_settings(profile, "int8")
            cand["recipe"] = "explicit Q/DQ"
            cand["quantization"] = self._artifact(onnx_path, out_dir, name, "int8", "int8", calib, 0, profile, cand)
            settings["candidates"] = [cand]
            extra.append(cand["onnx"])
        return EngineSpec(self.name, precision, settings["onnx"], extra_files=extra, settings=settings,
                          quantization=quant, status=PENDING)

    @staticmethod
    def _artifact(onnx_path, out_dir: Path, name, candidate_id, precision, calib, level, profile,
                  settings: dict) -> dict:
        onnx_rel, engine_rel = artifact_paths(name, candidate_id)
        quant = write_artifact(onnx_path, out_dir / onnx_rel, precision, calib, level, profile)
        settings.update(onnx=onnx_rel.as_posix(), engine=engine_rel.as_posix(),
                        trtexec=shell_line(trtexec_command(settings, onnx_rel.as_posix(), engine_rel.as_posix(),
                                                           TIMING_CACHE.as_posix())))
        return quant

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:
        from edgevit.backends.tensorrt.gpu import device_info, engine_mismatches

        if spec.status == PENDING:
            raise EdgevitError(f"bundle {bundle_dir}: {spec.settings.get('engine', spec.file)} is {PENDING}; "
                               f"build it on the target device with: edgevit engine build {bundle_dir}")
        problems = engine_mismatches(spec.settings.get("built_on") or {}, device_info(), spec.settings)
        if problems:
            raise EdgevitError(f"bundle {bundle_dir}: refusing to load {spec.file}: " + "; ".join(problems) +
                               f". Rebuild it for this device from the bundle's kit: edgevit engine build "
                               f"{bundle_dir} --force")
        return TensorRTRunner(Path(bundle_dir) / spec.file, spec.settings)

    def validation_runner(self, bundle_dir, spec: EngineSpec) -> Runner:
        if spec.status != PENDING:
            return self.load(bundle_dir, spec)
        from edgevit.backends.onnxruntime import OrtRunner

        # What the device will build from, run exactly as written (CPU: no GPU is involved yet).
        return OrtRunner(Path(bundle_dir) / spec.file, ["CPUExecutionProvider"])


BACKEND = TensorRTBackend()
