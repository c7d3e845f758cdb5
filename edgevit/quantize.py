"""INT8 quantization per backend, from the calibration split, with escalating protection.

Each function here makes one build candidate (``edgevit.backends``' recipes); the builder validates every
candidate, measures those that pass, and ships the fastest (``edgevit.selection``).

Levels, tried in order until a preset passes the profile's accuracy gate (the builder runs the gate):

* ``0``: the transformer default. ONNX Runtime quantizes only MatMul/Gemm/Conv (QDQ, per-channel symmetric
  weights), so LayerNorm, Softmax and GELU stay in FP32; OpenVINO uses NNCF's post-training quantization with
  the transformer model type, which keeps the same operations in floating point.
* ``1``: additionally keeps in FP32 the classifier head, the activation-by-activation MatMuls (attention's q.k
  and attn.v) and the projections that feed token selection (SuperViT's TopK); for OpenVINO, NNCF's
  accuracy-controlled quantization with the head ignored, measured as agreement with the FP32 model on the
  calibration split (never the validation split, which reports the result).

OpenVINO is quantized from its own model, never by re-using ONNX Runtime's QDQ file: OpenVINO's low-precision
transformations could not compile ORT's QDQ ViT (ARCHITECTURE.md §3).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
import tempfile
from pathlib import Path

import numpy as np

from edgevit.export import INPUT_NAME

LEVELS = (0, 1)
MAX_RESTORE_ITERATIONS = 8
LEVEL_NAMES = {0: "int8 (LayerNorm/Softmax/GELU in fp32)",
               1: "int8 (+ head, attention and token-selection matmuls in fp32)"}


def batches(x: np.ndarray, batch: int):
    for i in range(0, len(x) - batch + 1, batch):
        yield np.ascontiguousarray(x[i:i + batch])


# -- graph inspection (ONNX) ------------------------------------------------------------------------------

def sensitive_nodes(onnx_path) -> dict[str, list[str]]:
    """Nodes whose INT8 error changes discrete outcomes or the logits directly:

    * ``head``: the last MatMul/Gemm before the output;
    * ``attention``: MatMuls between two activations (q.k and attn.v);
    * ``selection``: the weight MatMuls that feed a TopK (SuperViT's token keeping: noise there changes which
      tokens survive, the failure the spec warns about at low keep rates).
    """
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output}

    def weight_matmuls_upstream(tensors: list[str], first_only: bool) -> list[str]:
        found, seen, frontier = [], set(), list(tensors)
        while frontier:
            node = producer.get(frontier.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("MatMul", "Gemm") and any(i in consts for i in node.input):
                found.append(node.name)
                if first_only:
                    break
                continue  # the projection is the boundary: what feeds it is not part of this path
            frontier.extend(i for i in node.input if i and i not in consts)
        return found

    head = weight_matmuls_upstream([o.name for o in g.output], first_only=True)
    attention = [n.name for n in g.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]
    selection = []
    for n in g.node:
        if n.op_type == "TopK":
            selection += [m for m in weight_matmuls_upstream([n.input[0]], first_only=False) if m not in selection]
    return {"head": head, "attention": attention, "selection": selection}


def model_keep_fp32(onnx_path) -> list[str]:
    """Groups of ``sensitive_nodes`` the model family keeps out of INT8 at every level (VVT: its linear
    attention core, whose sums over all tokens lose too much in INT8), from the export's metadata."""
    import onnx

    from edgevit.export import KEEP_FP32_KEY

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return [g for g in props.get(KEEP_FP32_KEY, "").split(",") if g]


# -- ONNX Runtime ----------------------------------------------------------------------------------------

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
                         batch: int = 1, tensorrt: bool = False) -> dict:
    """QDQ INT8: per-channel symmetric int8 weights, int8 activations (symmetric, TensorRT-compatible).

    ``tensorrt=True`` writes the explicit-quantization form TensorRT's ONNX parser takes (ARCHITECTURE §3):
    weights stay FP32 behind their own Q/DQ pair (TensorRT folds it and picks its INT8 kernels), biases stay
    FP32 (TensorRT has no INT32 bias dequantization), and every consumer gets its own Q/DQ pair so TensorRT
    can fuse each one into its consumer; only GEMM inputs are quantized, never their outputs.
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
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if tensorrt:
        extra.update(AddQDQPairToWeight=True, QuantizeBias=False, DedicatedQDQPair=True,
                     # Q/DQ on GEMM inputs only: an output Q/DQ would feed Softmax (q.k) or LayerNorm an INT8
                     # tensor, the precision loss ARCHITECTURE §3 keeps them out of; TensorRT fuses the rest.
                     OpTypesToExcludeOutputQuantization=["MatMul", "Gemm", "Conv"])
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
            "excluded_nodes": exclude, "level": level, "target": "tensorrt" if tensorrt else "onnxruntime"}


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


# -- OpenVINO / NNCF -------------------------------------------------------------------------------------

def _ov_head_names(model) -> list[str]:
    node = model.get_results()[0].input_value(0).get_node()
    seen = 0
    while node is not None and seen < 16:
        if node.get_type_name() == "MatMul":
            return [node.get_friendly_name()]
        node = node.input_value(0).get_node() if node.get_input_size() else None
        seen += 1
    return []


def _ov_activation_matmuls(model) -> list[str]:
    """MatMuls of two activations in an OpenVINO model (no constant operand, through Converts)."""
    def constant(node):
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
            and not any(constant(op.input_value(i).get_node()) for i in range(op.get_input_size()))]


def quantize_openvino(fp32_onnx, out_xml, calib: np.ndarray, level: int = 0, batch: int = 1,
                      max_drop: float = 0.01, inference_precision: str = "f32") -> dict:
    """NNCF PTQ on the OpenVINO model (transformer model type); level 1: accuracy-controlled."""
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # the build prints its own per-attempt summary
    model = ov.Core().read_model(str(fp32_onnx))
    calib_batches = list(batches(calib, batch))
    dataset = nncf.Dataset(calib_batches)
    common = dict(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                  subset_size=len(calib_batches))
    info = {"tool": f"nncf {nncf.__version__}", "model_type": "transformer", "samples": len(calib_batches) * batch,
            "level": level}
    keep = _ov_activation_matmuls(model) if "attention" in model_keep_fp32(fp32_onnx) else []
    if level == 0:
        if keep:
            common["ignored_scope"] = nncf.IgnoredScope(names=keep, validate=False)
            info["ignored"] = keep
        qmodel = nncf.quantize(model, dataset, **common)
    else:
        head = _ov_head_names(model)
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": inference_precision})
        reference = [int(np.argmax(compiled(b)[0], axis=-1)[0]) for b in calib_batches]

        def agreement(compiled_model, items):
            hits = [float(int(np.argmax(compiled_model(b)[0], axis=-1)[0]) == r) for b, r in zip(items, reference)]
            return float(np.mean(hits)), hits

        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        # Bounded: each iteration re-validates; a preset that needs more goes to the FP32 fallback instead.
        # Ranking each quantizer group on a subset bounds the cost (it dominated builds where INT8 failed).
        restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=MAX_RESTORE_ITERATIONS, num_ranking_workers=1,
                                                      ranking_subset_size=min(64, len(calib_batches)))
        qmodel = nncf.quantize_with_accuracy_control(
            model, calibration_dataset=dataset, validation_dataset=dataset, validation_fn=agreement,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
            ignored_scope=nncf.IgnoredScope(names=head + keep, validate=False),
            advanced_accuracy_restorer_parameters=restorer, **common)
        info.update(accuracy_control={"metric": "agreement with FP32 on the calibration split",
                                      "max_drop": max_drop, "max_iterations": MAX_RESTORE_ITERATIONS},
                    ignored=head + keep)
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(qmodel, str(out_xml), compress_to_fp16=False)
    return info


def compress_openvino_model(model):
    """(model with INT8 weights, report): NNCF weight compression, FP32 activations. Nothing is calibrated,
    so one engine can serve inputs of every shape, as a shared-weight engine does."""
    import logging

    import nncf

    nncf.set_log_level(logging.WARNING)
    return (nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM),
            {"tool": f"nncf {nncf.__version__} compress_weights", "mode": "INT8_ASYM", "level": None})


def compress_openvino_weights(fp32_onnx, out_xml) -> dict:
    """``compress_openvino_model`` of the ONNX, written as an IR."""
    import openvino as ov

    model, report = compress_openvino_model(ov.convert_model(str(fp32_onnx)))
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return report


def convert_openvino_fp32(fp32_onnx, out_xml) -> dict:
    import openvino as ov

    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(fp32_onnx)), str(out_xml), compress_to_fp16=False)
    return {"tool": f"openvino {ov.__version__} convert_model", "level": None}
