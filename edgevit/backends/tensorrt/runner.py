"""Running one TensorRT engine: deserialized once, an execution context per preset it serves, device buffers
allocated once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from edgevit.backends.base import Runner
from edgevit.errors import EdgevitError


def _numpy_dtype(trt, dtype) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as e:
        raise EdgevitError(f"engine tensor type {dtype} has no numpy equivalent ({e})") from None


def _refit(trt, engine, onnx_path, logger) -> None:
    """Give a weight-stripped plan its weights from the ONNX it was built from (and its weights file)."""
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgevitError(f"TensorRT {trt.__version__} could not read the weights of {onnx_path}: {errors}")
    if not refitter.refit_cuda_engine():
        raise EdgevitError(f"TensorRT {trt.__version__} could not refit the engine from {onnx_path}; rebuild it "
                           f"on this device with: edgevit engine build BUNDLE --force")


TRUST_ENV = "EDGEVIT_TRUST_ENGINE_CODE"


def refuse_host_code(settings: dict, engine) -> None:
    """A version-compatible plan carries TensorRT's lean runtime and runs it as host code; NVIDIA allows that
    for trusted plans only, so it loads only where the user said so (``EDGEVIT_TRUST_ENGINE_CODE=1``, or
    ``--trust-engine-code``) or the device build has just made it, never because a manifest says so."""
    if settings.get("version_compatible") and not (settings.get("host_code_allowed")
                                                   or os.environ.get(TRUST_ENV) == "1"):
        raise EdgevitError(f"{engine} is a version-compatible TensorRT engine: it runs code it carries (TensorRT's "
                           f"lean runtime). Load it only if you trust the bundle: set {TRUST_ENV}=1 (or pass "
                           f"--trust-engine-code)")


class TensorRTRunner(Runner):
    """One deserialized engine, device buffers allocated once. A static engine has one execution context. A
    shared-weight engine (one optimisation profile per preset, ``profiles``) gets a context per preset from
    ``bind`` (``backends.shared.shared_runner``): the contexts share the engine's weights, one activation
    buffer sized for the largest profile, and the image and logits buffers, so every preset resident costs
    one engine's memory, and a switch is choosing another context."""

    def __init__(self, engine_path, settings: dict, refit_onnx=None):
        import tensorrt as trt

        from edgevit.backends.tensorrt.cuda_memory import device_memory

        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        if settings.get("version_compatible"):
            refuse_host_code(settings, engine_path)
            self.runtime.engine_host_code_allowed = True  # the lean runtime travels inside the engine
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EdgevitError(f"TensorRT {trt.__version__} could not deserialize {engine_path}; rebuild it on this "
                               f"device with: edgevit engine build BUNDLE --force")
        if refit_onnx is not None:
            _refit(trt, self.engine, refit_onnx, logger)
        self.mem = device_memory()
        self._bufs: list = []
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in self._inputs]
        self.profiles = settings.get("profiles") or []
        if len(outputs) != 1 or (len(self._inputs) != 1 and not self.profiles):
            raise EdgevitError(f"{engine_path}: expected one input (or a profile per preset) and one output, "
                               f"found {self._inputs} and {outputs}")
        if self.profiles and self.engine.num_optimization_profiles != len(self.profiles):
            raise EdgevitError(f"{engine_path}: the engine has {self.engine.num_optimization_profiles} optimisation "
                               f"profiles, its settings list {len(self.profiles)} presets; rebuild it with: "
                               f"edgevit engine build BUNDLE --force")
        # The image is the input every profile gives first (profiles.preset_profiles); the rest select a preset.
        image = next(iter(self.profiles[0]["shapes"])) if self.profiles else self._inputs[0]
        if image not in self._inputs:
            raise EdgevitError(f"{engine_path}: its settings' profiles name input {image!r}, the engine has "
                               f"{self._inputs}; rebuild it with: edgevit engine build BUNDLE --force")
        self._inputs = [image] + [n for n in self._inputs if n != image]
        self.input_name, self.output_name = image, outputs[0]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.output_shape = tuple(self.engine.get_tensor_shape(self.output_name))
        self.input_dtype = _numpy_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _numpy_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self._in, self._in_ptr = self._alloc(self.input_shape, self.input_dtype)
        self._out = self._out_ptr = None
        if all(d >= 0 for d in self.output_shape):   # else known once a context has its input shapes
            self._out, self._out_ptr = self._alloc(self.output_shape, self.output_dtype)
        self._lock = threading.Lock()  # one inference at a time: the contexts share buffers
        self.context = None
        if not self.profiles:
            self.context = self.engine.create_execution_context()
            self.context.set_tensor_address(self.input_name, self._in_ptr)
            self.context.set_tensor_address(self.output_name, self._out_ptr)
        else:
            size = getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size
            _, self._scratch_ptr = self._alloc((max(int(size), 1),), np.uint8)
            self._scratch_size = int(size)

    def _alloc(self, shape, dtype):
        buf, ptr = self.mem.alloc(shape, dtype)
        self._bufs.append(buf)
        return buf, ptr

    def _context(self, index: int, feeds: dict):
        """An execution context on optimisation profile ``index``, its preset's inputs on the device once."""
        trt = self._trt
        if not 0 <= index < len(self.profiles):
            raise EdgevitError(f"preset index {index}: the engine has {len(self.profiles)} optimisation profiles")
        missing = set(self._inputs[1:]) - set(feeds)
        if missing:
            raise EdgevitError(f"optimisation profile {index} ({self.profiles[index]['preset']}): no values for "
                               f"inputs {sorted(missing)}")
        ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if hasattr(ctx, "set_device_memory"):
            ctx.set_device_memory(self._scratch_ptr, self._scratch_size)
        else:
            ctx.device_memory = self._scratch_ptr
        ctx.set_optimization_profile_async(index, self.mem.stream_handle)
        ctx.set_input_shape(self.input_name, self.input_shape)
        ctx.set_tensor_address(self.input_name, self._in_ptr)
        for name in self._inputs[1:]:
            value = np.ascontiguousarray(feeds[name], dtype=_numpy_dtype(trt, self.engine.get_tensor_dtype(name)))
            ctx.set_input_shape(name, value.shape)
            buf, ptr = self._alloc(value.shape, value.dtype)
            self.mem.to_device(buf, value)
            ctx.set_tensor_address(name, ptr)
        if self._out is None:   # the logits' shape, resolved from this profile's input shapes
            self.output_shape = tuple(ctx.get_tensor_shape(self.output_name))
            self._out, self._out_ptr = self._alloc(self.output_shape, self.output_dtype)
        ctx.set_tensor_address(self.output_name, self._out_ptr)
        self.mem.synchronize()
        return ctx

    def _execute(self, ctx, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if batch.shape != self.input_shape:
            raise EdgevitError(f"engine input is {self.input_shape}, got {batch.shape}")
        with self._lock:
            self.mem.to_device(self._in, batch)
            if not ctx.execute_async_v3(self.mem.stream_handle):
                raise EdgevitError("TensorRT execute_async_v3 failed")
            out = self.mem.to_host(self._out)
        return out.astype(np.float32, copy=False)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.context is None:
            raise EdgevitError("this TensorRT engine serves every preset of a shared-weight bundle: load a preset "
                               "(edgevit.load) rather than the engine itself")
        return self._execute(self.context, batch)

    def bind(self, feeds: dict):
        """``infer`` for one preset of a shared-weight engine: its context, on the profile its branch names."""
        from edgevit.backends.shared import BRANCH_INPUT

        if not self.profiles:
            return self.infer
        feeds = dict(feeds)
        index = int(feeds.pop(BRANCH_INPUT, -1))
        with self._lock:
            ctx = self._context(index, feeds)
        return lambda batch: self._execute(ctx, batch)

    def run(self, feeds: dict) -> np.ndarray:
        feeds = dict(feeds)
        return self.bind(feeds)(feeds.pop(self.input_name))

    def close(self) -> None:
        for buf in getattr(self, "_bufs", []):
            self.mem.free(buf)
        self._bufs = []
        self._in = self._out = None
        self.context = self.engine = None
