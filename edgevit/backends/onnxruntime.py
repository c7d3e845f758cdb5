"""ONNX Runtime: the portable backend. FP32 runs the exported ONNX; INT8 runs a QDQ model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgevit.backends.base import Backend, EngineSpec, Runner


class OrtRunner(Runner):
    def __init__(self, path, providers=None, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.providers = self.session.get_providers()
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.input_shape, self.output_shape = i.name, tuple(i.shape), tuple(o.shape)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe, so one session serves every caller.
        return self.session.run(None, {self.input_name: batch})[0]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    library = "onnxruntime"

    def compile(self, onnx_path, out_dir, name, precision, calib, level, profile) -> EngineSpec:
        from edgevit.quantize import quantize_onnxruntime

        rel = Path("engines") / self.name / f"{name}.{precision}.onnx"
        out = Path(out_dir) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        quant = {}
        if precision == "int8":
            quant = quantize_onnxruntime(onnx_path, out, calib, level, profile.calibration["method"], profile.batch)
        elif precision == "fp32":
            shutil.copyfile(onnx_path, out)
        else:
            raise ValueError(f"onnxruntime backend builds int8 or fp32 on this host, not {precision}")
        settings = {"providers": list(profile.onnxruntime["providers"]), "threads": profile.onnxruntime["threads"]}
        return EngineSpec(self.name, precision, rel.as_posix(), settings=settings, quantization=quant)

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:
        return OrtRunner(Path(bundle_dir) / spec.file, spec.settings.get("providers"), spec.settings.get("threads", 0))


BACKEND = OnnxRuntimeBackend()
