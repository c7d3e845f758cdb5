"""OpenVINO's runner: a compiled model per engine with the compile settings the bundle pinned, imported from
the checked compile cache (``cache``) when a blob of the same engine and settings is there.

Device side: numpy and openvino only."""

from __future__ import annotations

import threading

import numpy as np

from edgevit.backends.base import Runner

_CORE = None


def core():
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def compile_config(settings: dict) -> dict:
    # INFERENCE_PRECISION_HINT is always explicit: on AVX512-BF16/AMX CPUs OpenVINO would pick bf16 itself.
    cfg = {"INFERENCE_PRECISION_HINT": settings.get("inference_precision", "f32"),
           "PERFORMANCE_HINT": settings.get("performance_hint", "LATENCY"),
           "NUM_STREAMS": str(settings.get("num_streams", 1))}
    if settings.get("threads"):
        cfg["INFERENCE_NUM_THREADS"] = int(settings["threads"])
    if settings.get("snippets_mode"):
        cfg["SNIPPETS_MODE"] = settings["snippets_mode"]
    return cfg


class OvRunner(Runner):
    def __init__(self, xml_path, settings: dict):
        if settings.get("cache_dir"):
            # A later load imports the compiled blob instead of compiling again, once its sha256 matches.
            from edgevit.backends.openvino.cache import compile_checked

            self.compiled = compile_checked(core(), xml_path, compile_config(settings), settings["cache_dir"])
        else:
            self.compiled = core().compile_model(str(xml_path), "CPU", compile_config(settings))
        # What the plugin will really use, read back (e.g. "f32", "bf16"), recorded in the manifest.
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        i, o = self.compiled.inputs[0], self.compiled.outputs[0]
        self.input_name = i.get_any_name()
        self.input_shape, self.output_shape = _shape(i), _shape(o)
        self._names = {n for port in self.compiled.inputs for n in port.get_names()}
        self._local = threading.local()

    def _request(self):
        # An infer request is not thread-safe; each calling thread gets its own.
        req = getattr(self._local, "req", None)
        if req is None:
            req = self._local.req = self.compiled.create_infer_request()
        return req

    def infer(self, batch: np.ndarray) -> np.ndarray:
        req = self._request()
        req.infer({0: batch})
        return req.get_output_tensor(0).data.copy()

    def run(self, feeds: dict) -> np.ndarray:
        req = self._request()
        req.infer({k: v for k, v in feeds.items() if k in self._names})
        return req.get_output_tensor(0).data.copy()

    def bind(self, feeds: dict):
        """A preset of a shared engine: infer requests (one per calling thread) with the preset's inputs set
        once. Set with every request, they cost the dynamic-shape graph 2-7 % a request (SuperViT-DeiT-S,
        AVX2, paired rounds); a switch is still picking another preset's request."""
        import openvino as ov

        # np.array, not ascontiguousarray: that makes a 0-d input (a branch index) 1-d
        tensors = {k: ov.Tensor(np.array(v, order="C")) for k, v in feeds.items() if k in self._names}
        local = threading.local()

        def infer(batch: np.ndarray) -> np.ndarray:
            req = getattr(local, "req", None)
            if req is None:
                req = local.req = self.compiled.create_infer_request()
                for name, t in tensors.items():
                    req.set_tensor(name, t)
            req.infer({self.input_name: batch})
            return req.get_output_tensor(0).data.copy()

        return infer


def _shape(port) -> tuple:
    """A port's shape, -1 for a dynamic dimension (shared-weight engines have some inside)."""
    ps = port.get_partial_shape()
    return tuple(d.get_length() if d.is_static else -1 for d in ps)
