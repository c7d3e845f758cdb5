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
from typing import NamedTuple


from edgevit.backends.base import Backend, Candidate, EngineSpec, Runner
from edgevit.backends.shared import SharedRunner, preset_feeds, shared_runner
from edgevit.manifest import PENDING
from edgevit.backends.tensorrt.build import build_settings, shell_line, trtexec_command
from edgevit.backends.tensorrt.kit import TIMING_CACHE, artifact_paths, refit_from, write_artifact
from edgevit.backends.tensorrt.runner import TensorRTRunner, refuse_host_code
from edgevit.errors import EdgevitError
from edgevit.fields import F


class _Source(NamedTuple):
    """What one preset's kit files are made from, and where they go."""

    onnx_path: Path
    out_dir: Path
    name: str
    calib: object
    profile: object


def _artifact(src: _Source, candidate_id: str, precision: str, level, settings: dict) -> dict:
    """One candidate's explicit-precision ONNX in the kit; ``settings`` gets its paths and trtexec line."""
    onnx_rel, engine_rel = artifact_paths(src.name, candidate_id)
    quant = write_artifact(src.onnx_path, src.out_dir / onnx_rel, precision, src.calib, level, src.profile)
    settings.update(onnx=onnx_rel.as_posix(), engine=engine_rel.as_posix(),
                    trtexec=shell_line(trtexec_command(settings, onnx_rel.as_posix(), engine_rel.as_posix(),
                                                       TIMING_CACHE.as_posix())))
    return quant


def _takes_preset_inputs(onnx_path) -> bool:
    import onnx

    return len(onnx.load(str(onnx_path), load_external_data=False).graph.input) > 1


class TensorRTBackend(Backend):
    name = "tensorrt"
    library = "tensorrt"
    modules = ("tensorrt", "cuda")   # cuda-python: the runner's device buffers
    device_build = "edgevit.backends.tensorrt.device_build"
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

    def recipes(self, precision, profile) -> list[Candidate]:
        if precision == "int8":
            return [Candidate("int8", "int8", "explicit Q/DQ", level=0),
                    Candidate("int8-protected", "int8", "explicit Q/DQ (+ head, attention, selection in fp32)",
                              level=1, escalates="int8")]
        if precision in ("fp16", "fp32"):
            return [Candidate(precision, precision, "strongly typed" if precision == "fp16" else "fp32")]
        return super().recipes(precision, profile)

    def shared_recipes(self, precision, profile) -> list[Candidate]:
        """One engine for every preset: the shared graph with an optimisation profile per preset (``profiles``).
        INT8 asks for FP16 here: one set of Q/DQ scales would be fitted to the activations of presets whose
        token counts differ 3-fold (docs/architecture.md, shared weights)."""
        if precision == "int8":
            return [Candidate("fp16", "fp16", "strongly typed, an optimisation profile per preset (INT8 Q/DQ "
                                              "scales would be shared by every preset)")]
        if precision in ("fp16", "fp32"):
            return [Candidate(precision, precision, f"{'strongly typed' if precision == 'fp16' else 'fp32'}, "
                                                    f"an optimisation profile per preset")]
        return super().shared_recipes(precision, profile)

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
        src = _Source(onnx_path, Path(out_dir), name, calib, profile)
        quant = _artifact(src, candidate.id, precision, candidate.level, settings)
        extra = []
        # A shared-weight graph (the preset is inputs) has no INT8 candidate: its calibration would need
        # every preset's inputs, and one set of scales would serve them all (shared_recipes).
        if precision == "fp16" and profile.tensorrt.get("int8_if_faster") and not _takes_preset_inputs(onnx_path):
            # docs/architecture.md, "Backends": INT8 is not always faster than FP16 for ViTs on GPUs; the device measures both.
            cand = build_settings(profile, "int8")
            cand["recipe"] = "explicit Q/DQ"
            cand["quantization"] = _artifact(src, "int8", "int8", 0, cand)
            settings["candidates"] = [cand]
            extra.append(cand["onnx"])
        return EngineSpec(self.name, precision, settings["onnx"], extra_files=extra, settings=settings,
                          quantization=quant, status=PENDING)

    def load(self, bundle_dir, spec: EngineSpec) -> Runner:
        from edgevit.backends.tensorrt.gpu import device_info, engine_mismatches

        refuse_host_code(spec.settings, Path(bundle_dir) / spec.file)
        if spec.status == PENDING:
            raise EdgevitError(f"bundle {bundle_dir}: {spec.settings.get('engine', spec.file)} is {PENDING}; "
                               f"build it on the target device with: edgevit engine build {bundle_dir}")
        problems = engine_mismatches(spec.settings.get("built_on") or {}, device_info(), spec.settings)
        if problems:
            raise EdgevitError(f"bundle {bundle_dir}: refusing to load {spec.file}: " + "; ".join(problems) +
                               f". Rebuild it for this device from the bundle's kit: edgevit engine build "
                               f"{bundle_dir} --force")

        def make():
            return TensorRTRunner(Path(bundle_dir) / spec.file, spec.settings, refit_from(bundle_dir, spec.settings))

        # Shared weights: one engine per process, each preset a context on its own optimisation profile.
        return shared_runner(bundle_dir, spec, make) if spec.settings.get("shared") else make()

    def files_read(self, spec: EngineSpec) -> list[str]:
        # A weight-stripped plan is refitted from the kit's ONNX at load, and that ONNX reads the kit's shared
        # weights file by itself: both must be among the engine's files, or they would be read unchecked.
        s = spec.settings
        needed = [s["onnx"]] if s.get("strip_weights") and isinstance(s.get("onnx"), str) else []
        needed += [s["weights"]] if isinstance(s.get("weights"), str) else []
        if missing := [f for f in needed if f not in spec.files]:
            raise EdgevitError(f"tensorrt engine {spec.file}: {missing} are read at load but are not among the "
                               f"engine's files (extra_files {spec.extra_files}); rebuild the bundle")
        return super().files_read(spec)

    def validation_runner(self, bundle_dir, spec: EngineSpec) -> Runner:
        if spec.status != PENDING:
            return self.load(bundle_dir, spec)
        from edgevit.backends.onnxruntime.runner import OrtRunner

        # What the device will build from, run exactly as written (CPU: no GPU is involved yet); a shared
        # engine's preset is that graph fed the preset's inputs.
        runner = OrtRunner(Path(bundle_dir) / spec.file, ["CPUExecutionProvider"])
        if spec.settings.get("shared"):
            return SharedRunner(runner, preset_feeds(bundle_dir, spec.settings["shared"]), runner.close)
        return runner

    def validation_notes(self, bundle_dir, spec: EngineSpec, checks, preset: str) -> dict:
        """A pending engine was validated as the device will build it, on ONNX Runtime; the precisions the
        device will also build and measure (FP16 profiles' INT8) are checked here on the CPU too."""
        if spec.status != PENDING:
            return {}
        from edgevit.backends.onnxruntime.runner import OrtRunner
        from edgevit.build.validate import gate, validate

        out = []
        for s in spec.settings.get("candidates", []):
            with OrtRunner(Path(bundle_dir) / s["onnx"], ["CPUExecutionProvider"]) as runner:
                v = validate(runner, checks.x, checks.y, checks.refs[preset])
            g = gate(v, checks.torch_top1(preset), checks.accuracy)
            out.append({"precision": s["precision"], "onnx": s["onnx"], "passed": g.passed, "reason": g.reason,
                        "gate": g.to_dict(), **v.to_dict()})
        # Validated as the device will build it; the engine's own figures replace these there.
        return {"validated_with": f"onnxruntime CPU ({spec.file}, the ONNX the engine is built from)",
                "device_candidates": out}


BACKEND = TensorRTBackend()
