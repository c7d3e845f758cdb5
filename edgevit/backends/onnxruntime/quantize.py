"""ONNX Runtime's quantizers: static QDQ INT8 (calibrated), dynamic INT8 and the FP16 conversion, each a
candidate of the ONNX Runtime backend (and, in TensorRT's explicit Q/DQ form, of TensorRT's kit)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevit.build.export import INPUT_NAME
from edgevit.build.quantize import batches, model_keep_fp32, sensitive_nodes


@dataclass(frozen=True)
class QdqForm:
    """Who reads a QDQ model (``target``) and the ``quantize_static`` extra options that form needs."""

    target: str = "onnxruntime"
    extra_options: dict = field(default_factory=dict)


ORT_QDQ = QdqForm()


@contextmanager
def _preprocessed(fp32_onnx, work_dir: Path):
    """The model after ONNX Runtime's shape inference and graph clean-up, which its quantization guide asks
    for before quantizing; a temporary file beside the output, removed afterwards."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fd, pre = tempfile.mkstemp(suffix=".onnx", dir=work_dir)
    os.close(fd)
    try:
        quant_pre_process(str(fp32_onnx), pre, skip_symbolic_shape=True)
        yield pre
    finally:
        if os.path.exists(pre):
            os.unlink(pre)


def quantize_onnxruntime(fp32_onnx, out_path, calib: np.ndarray, level: int = 0, method: str = "minmax",
                         batch: int = 1, form: QdqForm = ORT_QDQ) -> dict:
    """QDQ INT8: per-channel symmetric int8 weights, int8 activations (symmetric, TensorRT-compatible).
    ``form``: the reader's extra options (TensorRT's explicit-quantization form: ``tensorrt.kit.TENSORRT_QDQ``).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches(calib, batch))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT_NAME: x}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    exclude: list[str] = []
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, **form.extra_options}
    with _preprocessed(fp32_onnx, out_path.parent) as pre:
        # Names from the pre-processed graph: pre-processing may fuse and rename nodes.
        groups = sensitive_nodes(pre)
        wanted = set(groups) if level >= 1 else set(model_keep_fp32(fp32_onnx))
        exclude = [n for g in groups if g in wanted for n in groups[g]]
        quantize_static(pre, str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=methods[method],
                        extra_options=extra)
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
            "symmetric": True, "calibration": method, "samples": int(len(calib) // batch * batch),
            "excluded_nodes": exclude, "level": level, "target": form.target}


def quantize_onnxruntime_dynamic(fp32_onnx, out_path) -> dict:
    """Dynamic INT8, ONNX Runtime's recommended method for transformers: MatMul/Gemm weights in int8 (per
    channel), activations quantized on the fly per call, so there is nothing to calibrate. The
    activation-by-activation MatMuls (attention) and what the model family keeps in FP32 stay in FP32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _preprocessed(fp32_onnx, out_path.parent) as pre:
        groups = sensitive_nodes(pre)
        exclude = list(groups["attention"])
        for g in model_keep_fp32(fp32_onnx):
            exclude += [n for n in groups.get(g, []) if n not in exclude]
        quantize_dynamic(pre, str(out_path), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "per_channel": True, "weights": "int8",
            "activations": "uint8, quantized per call", "excluded_nodes": exclude, "level": None}


# Kept in FP32 inside an FP16 model: reductions that overflow or lose the small differences they rank (the
# normalisations' mean/variance, softmax, SuperViT's token-selection TopK), and the input resize.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "TopK", "Resize", "ReduceMean", "Pow", "Sqrt"]


def convert_fp16(fp32_onnx, out_path) -> dict:
    """An FP16 ONNX model with FP32 inputs and outputs: what a strongly typed TensorRT network needs to run
    in FP16 (TensorRT 11 has no FP16 builder flag), and what ONNX Runtime's GPU providers run directly."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep_nodes = []
    if "attention" in model_keep_fp32(fp32_onnx):
        # VVT: S and the normaliser sum over every token and pass 65504 at high resolution (spec §7).
        proto = onnx.load(str(fp32_onnx), load_external_data=False)
        keep_nodes = sensitive_nodes(fp32_onnx)["attention"] + [n.name for n in proto.graph.node
                                                                 if n.op_type in ("ReduceSum", "Reciprocal")]
    model = convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                     node_block_list=keep_nodes)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "io_types": "float32",
            "kept_fp32": FP16_KEEP_FP32, "kept_fp32_nodes": keep_nodes, "level": None}
