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


def tensorrt_qdq():
    """The explicit-quantization form TensorRT's ONNX parser takes (docs/architecture.md, backends): weights stay
    FP32 behind their own Q/DQ pair (TensorRT folds it and picks its INT8 kernels), biases stay FP32 (TensorRT
    has no INT32 bias dequantization), and every consumer gets its own Q/DQ pair so TensorRT can fuse each
    into its consumer; only GEMM inputs are quantized, never their outputs (an output Q/DQ would feed Softmax
    or LayerNorm an INT8 tensor)."""
    from edgevit.backends.onnxruntime.quantize import QdqForm

    return QdqForm("tensorrt", {"AddQDQPairToWeight": True, "QuantizeBias": False, "DedicatedQDQPair": True,
                                "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]})


def write_artifact(fp32_onnx, out: Path, precision: str, calib, level, profile) -> dict:
    """The explicit-precision ONNX for ``precision``: what TensorRT builds from and ORT validates."""
    from edgevit.backends.onnxruntime.quantize import convert_fp16, quantize_onnxruntime

    out.parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        return quantize_onnxruntime(fp32_onnx, out, calib, level, profile.calibration["method"], profile.batch,
                                    form=tensorrt_qdq())
    if precision == "fp16":
        return convert_fp16(fp32_onnx, out)
    shutil.copyfile(fp32_onnx, out)
    return {}


WEIGHTS_FILE = KIT_DIR / "weights.bin"


def refit_from(bundle_dir, settings: dict) -> Path | None:
    """The ONNX a weight-stripped plan takes its weights from at load (None: the plan holds its own)."""
    return Path(bundle_dir) / settings["onnx"] if settings.get("strip_weights") else None
_ALIGN = 64


def share_weights(bundle_dir: Path, onnx_rels: list[str], min_bytes: int = 1024) -> dict:
    """Store every initializer of at least ``min_bytes`` in the kit's ONNX files once, in ``WEIGHTS_FILE``
    (ONNX external data; TensorRT's parser, its refitter and ONNX Runtime all read it): 12 presets built from
    one set of weights hold one copy on disk instead of 12. Identical tensors (by content) share one range;
    each ONNX file keeps its graph and its small constants. Returns the bytes before and after."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    bundle_dir = Path(bundle_dir)
    weights = bundle_dir / WEIGHTS_FILE
    where: dict[str, tuple[int, int]] = {}
    before = after = 0
    tmp = weights.with_suffix(".bin.tmp")
    rels = list(dict.fromkeys(onnx_rels))
    # One file at a time (one model in memory): a file already pointing into the old weights file reads it
    # until the new one replaces it at the end.
    with open(tmp, "wb") as out:
        for rel in rels:
            proto = onnx.load(str(bundle_dir / rel))
            for t in proto.graph.initializer:
                data = numpy_helper.to_array(t).tobytes()
                if len(data) < min_bytes:
                    continue
                before += len(data)
                key = hashlib.sha256(data).hexdigest() + str(t.data_type)
                if key not in where:
                    out.write(b"\0" * (-out.tell() % _ALIGN))
                    where[key] = (out.tell(), len(data))
                    out.write(data)
                    after += len(data)
                _point_at(t, WEIGHTS_FILE.name, *where[key])
            onnx.save(proto, str(bundle_dir / rel))
    tmp.replace(weights)
    return {"file": WEIGHTS_FILE.as_posix(), "onnx_files": len(rels), "tensors": len(where),
            "bytes_in_onnx": before, "bytes_stored": after}


def _point_at(t, location: str, offset: int, length: int) -> None:
    """Make initializer ``t`` read its data from ``location`` at ``offset`` (ONNX external data)."""
    import onnx

    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                  "string_data"):
        t.ClearField(field)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
