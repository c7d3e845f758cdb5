"""OpenVINO: the x86 CPU primary backend. Engines are OpenVINO IR (xml + bin), INT8 through NNCF."""

from __future__ import annotations

from pathlib import Path

from edgevit.backends.base import Backend, Candidate, EngineSpec, Runner
from edgevit.backends.openvino.runner import OvRunner
from edgevit.backends.shared import shared_runner
from edgevit.errors import EdgevitError
from edgevit.fields import F


def bf16_support() -> str | None:
    """Why this CPU cannot run OpenVINO's BF16 kernels (None: it can)."""
    from edgevit.host import cpu_info

    features = set(cpu_info()["features"])
    if features & {"avx512_bf16", "amx_bf16"}:
        return None
    return ("this CPU has no AVX512-BF16 or AMX-BF16 (OpenVINO would run the bf16 hint as f32); "
            f"it has {', '.join(sorted(features)) or 'none of the listed features'}")


class OpenVINOBackend(Backend):
    name = "openvino"
    library = "openvino"
    tools = ("openvino", "nncf")   # NNCF quantizes its INT8 engines
    compile_cache = True
    profile_section = {
        "inference_precision": F(str, "f32", choices=("f32", "bf16", "f16")),
        "performance_hint": F(str, "LATENCY", choices=("LATENCY", "THROUGHPUT")),
        "num_streams": F(int, 1, min=1),
        "threads": F(int, 0, min=0),
        # --shared-weights: "branches" (each preset's static graph behind If, weights once; static-engine
        # speed, 1.5x one preset's memory on DeiT-S in FP32) or "dynamic" (one dynamic-shape graph; 1.3x the
        # memory, but 1.5-2 ms more per request and 1.3-1.8 ms per preset switch).
        # docs/benchmarks/shared-deit-s-avx2.md
        "shared_graph": F(str, "branches", choices=("branches", "dynamic")),
    }

    def recipes(self, precision, profile) -> list[Candidate]:
        if precision == "int8":
            # The same NNCF IR with the ops NNCF leaves in float (LayerNorm, softmax, GELU, residual adds) run in
            # bf16: what a plain compile gives on a bf16 CPU. 0.90-1.01x the f32 one on SuperViT-DeiT-S
            # (AVX-512 BF16 host, docs/benchmarks/backends-deit-s-avx512.md), so the build measures both.
            return [Candidate("int8", "int8", "nncf-ptq (transformer)", level=0),
                    Candidate("int8-bf16", "int8", "nncf-ptq (transformer), float ops in bf16", level=0,
                              skip=bf16_support()),
                    Candidate("int8-mixed", "int8", "nncf-accuracy-control", level=1, escalates="int8")]
        if precision == "bf16":
            return [Candidate("bf16", "bf16", "fp32 IR, INFERENCE_PRECISION_HINT=bf16", skip=bf16_support())]
        if precision == "fp32":
            return [Candidate("fp32", "fp32", "convert_model")]
        return super().recipes(precision, profile)

    def shared_recipes(self, precision, profile) -> list[Candidate]:
        # The one dynamic-shape graph, calibrated on every preset: the weights packed once (1.4x one preset's
        # engine on DeiT-S), dynamic-shape work on every request; beside the branches, whose static graphs run
        # at the presets' own speed but cost the CPU plugin 12-17 MB a branch. Which one ships is the build's
        # choice: speed, then the profile's memory budget (``build.budget.within_budget``).
        graph_int8 = Candidate("int8-graph", "int8", "nncf.quantize of the one dynamic-shape graph, calibrated on "
                                                     "every preset's inputs in turn", source="graph-presets")
        if profile.openvino.get("shared_graph", "branches") == "branches":
            how = "every preset's static graph behind If, weights stored once"
            if precision == "int8":
                # Each branch is one preset's graph, so it can carry that preset's own activation scales.
                return [Candidate("int8-branches", "int8", f"nncf.quantize per preset (its own activation scales, "
                                                           f"SmoothQuant off: equal INT8 weights); {how}",
                                  source="presets"),
                        Candidate("int8-weights", "int8", f"nncf.compress_weights INT8 (weights only); {how}",
                                  source="presets"),
                        graph_int8]
            if precision in ("fp32", "bf16"):
                skip = bf16_support() if precision == "bf16" else None
                return [Candidate(precision, precision, f"convert_model, activations kept out of the matmuls; {how}",
                                  skip=skip, source="presets")]
            return super().shared_recipes(precision, profile)
        if precision == "int8":
            return [graph_int8, Candidate("int8-weights", "int8", "nncf.compress_weights INT8 (weights only)")]
        if precision == "bf16":
            return self.recipes(precision, profile)
        return super().shared_recipes(precision, profile)

    def compile(self, onnx_path, out_dir, name, candidate, calib, profile) -> EngineSpec:
        from edgevit.backends.openvino.quantize import (compress_openvino_weights, convert_openvino_fp32,
                                                        quantize_openvino)

        settings = dict(profile.openvino)
        settings.pop("shared_graph", None)     # a build choice, not a runtime setting
        rel = Path("engines") / self.name / f"{name}.{candidate.id}.xml"
        out = Path(out_dir) / rel
        if candidate.source == "graph-presets":
            from edgevit.backends.openvino.quantize import quantize_graph

            quant = quantize_graph(onnx_path, out, calib, profile.batch)
        elif candidate.source == "presets":
            from edgevit.backends.openvino import branches

            weights = {"int8-branches": "int8-static", "int8-weights": "int8"}.get(candidate.id, "fp32")
            quant = branches.build(onnx_path, out, weights, unfuse=candidate.precision == "fp32", calib=calib,
                                   batch=profile.batch)
            # Snippets compile per branch: +11 MB a branch (SuperViT-DeiT-S, AVX2) for no measured speed.
            settings["snippets_mode"] = "DISABLE"
            if candidate.precision == "bf16":
                settings["inference_precision"] = "bf16"
        elif candidate.id == "int8-weights":
            quant = compress_openvino_weights(onnx_path, out)
        elif candidate.precision == "int8":
            drop = min(profile.accuracy["max_top1_drop"], 1 - profile.accuracy["min_agreement"])
            if candidate.id == "int8-bf16":
                settings["inference_precision"] = "bf16"
            quant = quantize_openvino(onnx_path, out, calib, candidate.level, profile.batch, max_drop=drop,
                                      inference_precision=settings["inference_precision"])
        elif candidate.precision in ("fp32", "bf16"):
            quant = convert_openvino_fp32(onnx_path, out)
            if candidate.precision == "bf16":   # the same IR; the CPU plugin runs it in bf16
                settings["inference_precision"] = "bf16"
        else:
            raise ValueError(f"openvino backend builds int8, bf16 or fp32, not {candidate.precision}")
        return EngineSpec(self.name, candidate.precision, rel.as_posix(), [rel.with_suffix(".bin").as_posix()],
                          settings=settings, quantization=quant)

    def files_read(self, spec: EngineSpec) -> list[str]:
        # OpenVINO opens the weights beside the IR by itself (``x.xml`` -> ``x.bin``, and for an IR under any
        # other name too): a record that does not name an ``.xml`` and list its ``.bin`` is refused, else the
        # weights would be read unchecked.
        if not spec.file.endswith(".xml"):
            raise EdgevitError(f"openvino engine {spec.file}: expected an OpenVINO IR file ending in .xml")
        weights = str(Path(spec.file).with_suffix(".bin").as_posix())
        if weights not in spec.files:
            raise EdgevitError(f"openvino engine {spec.file}: its weights {weights} are not among the engine's files "
                               f"(extra_files {spec.extra_files}); OpenVINO would read them unchecked. Rebuild the "
                               f"bundle")
        return super().files_read(spec)

    def with_compile_cache(self, spec: EngineSpec, cache_dir: str | None) -> EngineSpec:
        """Blobs go to a folder of their own per engine file: ``cache_dir`` may serve a whole build, and a
        blob is looked up by its compile settings only (``openvino_cache``)."""
        if not cache_dir:
            return spec
        import hashlib

        folder = Path(cache_dir) / hashlib.sha256(spec.file.encode()).hexdigest()[:16]
        return EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings, "cache_dir": str(folder)}})

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:
        def make():
            return OvRunner(Path(bundle_dir) / spec.file, {k: v for k, v in spec.settings.items() if k != "shared"})

        return shared_runner(bundle_dir, spec, make) if spec.settings.get("shared") else make()


BACKEND = OpenVINOBackend()
