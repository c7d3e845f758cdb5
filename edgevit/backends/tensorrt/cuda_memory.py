"""Device buffers and a stream for TensorRT runners: torch CUDA tensors where torch has CUDA, cuda-python
otherwise (a Jetson image often has no CUDA build of torch). Both expose the same four operations."""

from __future__ import annotations

import numpy as np


def cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.x+, the only one in 13.x), else the legacy
    ``cuda.cudart``; None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # cuda-python < 12.9
        return runtime
    except ImportError:
        return None


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {int(err)} ({err})")
    return rest[0] if len(rest) == 1 else rest


class TorchCuda:
    """Buffers as torch CUDA tensors on one private stream."""

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def alloc(self, shape, dtype: np.dtype):
        t = self.torch.empty(tuple(shape), dtype=getattr(self.torch, np.dtype(dtype).name), device="cuda")
        return t, t.data_ptr()

    def to_device(self, buf, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(host), non_blocking=False)

    def to_host(self, buf) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            out = buf.cpu()
        return out.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def free(self, buf) -> None:
        del buf


class CudaPython:
    """Buffers from cudaMalloc, copies with cudaMemcpyAsync on a private stream."""

    def __init__(self):
        self.rt = cudart()
        if self.rt is None:
            raise ImportError("neither torch with CUDA nor cuda-python is installed")
        self.stream = _check(self.rt.cudaStreamCreate())

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def alloc(self, shape, dtype: np.dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = _check(self.rt.cudaMalloc(nbytes))
        return (ptr, tuple(shape), np.dtype(dtype), nbytes), int(ptr)

    def to_device(self, buf, host: np.ndarray) -> None:
        ptr, _, _, nbytes = buf
        host = np.ascontiguousarray(host)
        _check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def to_host(self, buf) -> np.ndarray:
        ptr, shape, dtype, nbytes = buf
        out = np.empty(shape, dtype)
        _check(self.rt.cudaMemcpyAsync(out.ctypes.data, ptr, nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self.synchronize()
        return out

    def synchronize(self) -> None:
        _check(self.rt.cudaStreamSynchronize(self.stream))

    def free(self, buf) -> None:
        _check(self.rt.cudaFree(buf[0]))


def device_memory():
    """The buffer provider this host supports (torch CUDA first)."""
    try:
        import torch

        if torch.cuda.is_available():
            return TorchCuda()
    except ImportError:
        pass
    return CudaPython()
