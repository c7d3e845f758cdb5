"""Running one TensorRT engine: deserialized once, one execution context, device buffers allocated once."""

from __future__ import annotations

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


class TensorRTRunner(Runner):
    """One deserialized engine, one execution context, device buffers allocated once."""

    def __init__(self, engine_path, settings: dict, refit_onnx=None):
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
        if refit_onnx is not None:
            _refit(trt, self.engine, refit_onnx, logger)
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
