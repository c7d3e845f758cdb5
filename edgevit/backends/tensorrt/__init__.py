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

from pathlib import Path


from edgevit.backends.base import PENDING, Backend, Candidate, EngineSpec, Runner
from edgevit.backends.tensorrt.build import build_settings, shell_line, trtexec_command
from edgevit.backends.tensorrt.kit import TIMING_CACHE, artifact_paths, refit_from, write_artifact
from edgevit.backends.tensorrt.runner import TensorRTRunner
from edgevit.errors import EdgevitError
from edgevit.schema import F


class TensorRTBackend(Backend):
    name = "tensorrt"
    library = "tensorrt"
    modules = ("tensorrt", "cuda")   # cuda-python: the runner's device buffers
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
        # Weight-stripped plans refitted at load from the kit's one weights file (kit.share_weights): the
        # bundle holds one copy of the weights on disk, not one per preset plan.
        "strip_weights": F(bool, True),
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
        from edgevit.backends.tensorrt.gpu import deferred_reason

        return deferred_reason()

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
        return TensorRTRunner(Path(bundle_dir) / spec.file, spec.settings, refit_from(bundle_dir, spec.settings))

    def validation_runner(self, bundle_dir, spec: EngineSpec) -> Runner:
        if spec.status != PENDING:
            return self.load(bundle_dir, spec)
        from edgevit.backends.onnxruntime import OrtRunner

        # What the device will build from, run exactly as written (CPU: no GPU is involved yet).
        return OrtRunner(Path(bundle_dir) / spec.file, ["CPUExecutionProvider"])


BACKEND = TensorRTBackend()
