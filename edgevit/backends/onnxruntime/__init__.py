"""ONNX Runtime: the portable backend. FP32 runs the exported ONNX; INT8 runs a QDQ model; FP16 (for GPU
execution providers) an FP16 model with FP32 inputs and outputs.

On desktop GPUs with onnxruntime-gpu it is TensorRT's alternative: the profile's providers (TensorRT, then
CUDA, then CPU) run the same files, with the TensorRT provider caching its engines per user.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgevit.backends.base import Backend, Candidate, EngineSpec, Runner
from edgevit.backends.onnxruntime.runner import GPU_PROVIDERS, OrtRunner
from edgevit.backends.shared import shared_runner
from edgevit.errors import EdgevitError
from edgevit.fields import F


def provider_options(precision: str, profile) -> dict:
    """Options per execution provider (names as in ONNX Runtime's TensorRT/CUDA provider documentation)."""
    own = profile.onnxruntime
    return {
        # A QDQ model needs INT8 enabled (TensorRT refuses Q/DQ layers otherwise) and no calibration table.
        "TensorrtExecutionProvider": {
            "trt_fp16_enable": precision in ("fp16", "int8"), "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True, "trt_timing_cache_enable": True,
            "trt_max_workspace_size": own["trt_workspace_mb"] << 20,
            "trt_builder_optimization_level": own["trt_builder_optimization_level"]},
        "CUDAExecutionProvider": {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"},
    }


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    library = "onnxruntime"
    profile_section = {
        "providers": F(list, ["CPUExecutionProvider"], items=str),
        "threads": F(int, 0, min=0),
        # The TensorRT execution provider's own settings (onnxruntime-gpu); this backend's, not the tensorrt
        # backend's section, so each backend reads only its own keys.
        "trt_workspace_mb": F(int, 4096, min=16),
        "trt_builder_optimization_level": F(int, 3, min=0, max=5),
    }

    def recipes(self, precision, profile) -> list[Candidate]:
        if precision == "int8":
            # No escalated static recipe (more layers in FP32): on the AVX2 host measured, wherever the plain one
            # failed the gate (12 of 12 demo presets) the escalated one failed too, and cost 22 s of the build;
            # dynamic INT8 is the recipe that keeps activations in FP32.
            return [Candidate("int8", "int8", "qdq-static", level=0),
                    # ONNX Runtime's recommendation for transformers: int8 weights, activations quantized per call.
                    Candidate("int8-dynamic", "int8", "dynamic (MatMul/Gemm weights)")]
        if precision == "fp16":
            # FP16 only pays where a GPU provider runs it; on a CPU-only target it is a slow FP32 in disguise.
            gpu = any(p in GPU_PROVIDERS for p in profile.onnxruntime["providers"])
            return [Candidate("fp16", "fp16", "float16 conversion",
                              skip=None if gpu else f"{self.name} does not build fp16 on this host: no GPU provider "
                                                    f"among {profile.onnxruntime['providers']}")]
        if precision == "fp32":
            return [Candidate("fp32", "fp32", "fp32 (ORT_ENABLE_ALL graph optimizations)")]
        return super().recipes(precision, profile)

    def shared_recipes(self, precision, profile) -> list[Candidate]:
        if precision == "int8":   # weight-only: nothing fitted to one preset's activations
            # Every preset's static graph as a branch of one model (one session), or over one weights file
            # (a session each), or one dynamic-shape graph: static speed against the least memory; all measured.
            return [Candidate("int8-dynamic-branches", "int8", "quantize_dynamic of every preset's static graph, "
                              "each a branch of one model (If), the weights once in its outer graph",
                              source="presets"),
                    Candidate("int8-dynamic-presets", "int8", "quantize_dynamic of every preset's static graph, "
                              "the weights in one file they all map, prepacking off", source="presets"),
                    *[c for c in self.recipes(precision, profile) if c.id == "int8-dynamic"]]
        return super().shared_recipes(precision, profile)

    def compile(self, onnx_path, out_dir, name, candidate, calib, profile) -> EngineSpec:
        from edgevit.backends.onnxruntime.quantize import (convert_fp16, quantize_onnxruntime,
                                                           quantize_onnxruntime_dynamic)

        rel = Path("engines") / self.name / f"{name}.{candidate.id}.onnx"
        out = Path(out_dir) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        quant = {}
        if candidate.id == "int8-dynamic-presets":
            return self._compile_presets(onnx_path, out.parent, f"{name}.{candidate.id}", profile)
        if candidate.id == "int8-dynamic-branches":
            from edgevit.backends.onnxruntime import branches

            quant = branches.build(onnx_path, out)
        elif candidate.id == "int8-dynamic":
            quant = quantize_onnxruntime_dynamic(onnx_path, out)
        elif candidate.precision == "int8":
            quant = quantize_onnxruntime(onnx_path, out, calib, candidate.level, profile.calibration["method"],
                                         profile.batch)
        elif candidate.precision == "fp16":
            quant = convert_fp16(onnx_path, out)
        elif candidate.precision == "fp32":
            shutil.copyfile(onnx_path, out)
        else:
            raise ValueError(f"onnxruntime backend builds int8, fp16 or fp32, not {candidate.precision}")
        providers = list(profile.onnxruntime["providers"])
        settings = {"providers": providers, "threads": profile.onnxruntime["threads"],
                    "provider_options": {p: o for p, o in provider_options(candidate.precision, profile).items()
                                         if p in providers}}
        return EngineSpec(self.name, candidate.precision, rel.as_posix(), settings=settings, quantization=quant)

    def _compile_presets(self, sources_json, folder: Path, stem: str, profile) -> EngineSpec:
        from edgevit.backends.onnxruntime import presets

        graphs, weights, quant = presets.build(sources_json, folder, stem)
        rel = Path("engines") / self.name
        settings = {"providers": list(profile.onnxruntime["providers"]), "threads": profile.onnxruntime["threads"],
                    "graphs": [(rel / g).as_posix() for g in graphs], "session_config": dict(presets.SESSION_CONFIG)}
        return EngineSpec(self.name, "int8", (rel / weights).as_posix(), settings["graphs"], settings=settings,
                          quantization=quant)

    def _load_preset_graph(self, bundle_dir, spec: EngineSpec) -> Runner:
        """One preset of an engine built from every preset's static graph: its own session over the shared
        weights file. The graph comes from the engine's file list, which the bundle checks, never from a path
        the settings alone name."""
        shared = spec.settings.get("shared") or {}
        graphs = spec.settings["graphs"]
        branch = shared.get("branch")
        if not isinstance(branch, int) or not 0 <= branch < len(graphs) or graphs[branch] not in spec.extra_files:
            raise EdgevitError(f"{spec.file}: preset branch {branch!r} names no graph of this engine's files "
                               f"({len(graphs)} graphs)")
        try:
            return OrtRunner(Path(bundle_dir) / graphs[branch], spec.settings.get("providers"),
                             spec.settings.get("threads", 0), None, spec.settings.get("session_config"))
        except Exception as e:   # ONNX Runtime's refusal (external data outside the bundle, a truncated file)
            raise EdgevitError(f"{graphs[branch]}: ONNX Runtime cannot load it with its weights file "
                               f"{spec.file}: {str(e).splitlines()[0][:300]}") from e

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:
        if "graphs" in spec.settings:
            return self._load_preset_graph(bundle_dir, spec)

        def make():
            return OrtRunner(Path(bundle_dir) / spec.file, spec.settings.get("providers"),
                             spec.settings.get("threads", 0), spec.settings.get("provider_options"))

        return shared_runner(bundle_dir, spec, make) if spec.settings.get("shared") else make()


BACKEND = OnnxRuntimeBackend()
