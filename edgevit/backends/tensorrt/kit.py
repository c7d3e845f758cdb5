"""The TensorRT kit: the explicit-precision ONNX each engine is built from, and where kit and engines live in a bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

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
