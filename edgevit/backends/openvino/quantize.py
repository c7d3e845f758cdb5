"""OpenVINO's quantizers (NNCF): post-training INT8 (transformer model type), accuracy-controlled INT8,
weight-only INT8 and the FP32 IR, each a candidate of the OpenVINO backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevit.build.quantize import batches, model_keep_fp32
from edgevit.errors import EdgevitError

MAX_RESTORE_ITERATIONS = 8
MIN_IMAGES_PER_PRESET = 4   # calibration images each preset contributes to the one graph's scales


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


def _ptq_settings(samples: int) -> dict:
    """NNCF post-training INT8 as every calibrated OpenVINO engine here is made: transformer model type,
    symmetric activations (PERFORMANCE), every calibration sample used."""
    import nncf

    return dict(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=samples)


def _family_keeps_fp32(model, onnx_path) -> list[str]:
    """The activation matmuls to leave in float where the model family keeps its attention out of INT8."""
    return _ov_activation_matmuls(model) if "attention" in model_keep_fp32(onnx_path) else []


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
    common = _ptq_settings(len(calib_batches))
    info = {"tool": f"nncf {nncf.__version__}", "model_type": "transformer", "samples": len(calib_batches) * batch,
            "level": level}
    keep = _family_keeps_fp32(model, fp32_onnx)
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


def quantize_graph(graph_sources, out_xml, calib: np.ndarray, batch: int = 1) -> dict:
    """NNCF INT8 of the one dynamic-shape graph every preset runs (``SharedPresets``), its activation scales
    fitted to every preset's activations: the calibration images go through the presets in turn (at least
    ``MIN_IMAGES_PER_PRESET`` each), so one scale per tensor covers the token counts and resolutions of all
    of them, and the weights are quantized and stored once. The gate checks each preset.

    Why beside ``int8-branches``: the CPU plugin packs each weight once for a dynamic graph, so every preset
    is resident in about 1.4x one preset's engine (SuperViT-DeiT-S, AMX host: 166 MB against 117 MB; the
    branches engine 2.5x), for dynamic-shape work on every request (1.2-1.3x the static engines there)."""
    import logging

    import nncf
    import openvino as ov

    from edgevit.build.shared import read_graph_sources

    nncf.set_log_level(logging.WARNING)
    onnx_path, presets = read_graph_sources(graph_sources)
    model = ov.Core().read_model(str(onnx_path))
    names = {n for port in model.inputs for n in port.get_names()}
    images = [port.get_any_name() for port in model.inputs if not port.get_names() & set(presets[0][1])]
    if len(images) != 1:
        raise EdgevitError(f"{onnx_path}: expected one image input beside the presets' inputs, found {images}")
    calib_batches = list(batches(calib, batch))
    n = max(len(calib_batches), MIN_IMAGES_PER_PRESET * len(presets))
    items = [{images[0]: calib_batches[i % len(calib_batches)],
              **{k: v for k, v in presets[i % len(presets)][1].items() if k in names}} for i in range(n)]
    common = _ptq_settings(n)
    keep = _family_keeps_fp32(model, onnx_path)
    if keep:
        common["ignored_scope"] = nncf.IgnoredScope(names=keep, validate=False)
    qmodel = nncf.quantize(model, nncf.Dataset(items), **common)
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(qmodel, str(out_xml), compress_to_fp16=False)
    return {"tool": f"nncf {nncf.__version__}", "model_type": "transformer", "samples": n * batch, "level": 0,
            "calibrated_on": [name for name, _ in presets], **({"ignored": keep} if keep else {})}


def quantize_branch(model, calib: np.ndarray, batch: int = 1) -> tuple[object, dict]:
    """(model, report): one preset's graph for a branch of a shared-weight engine, NNCF INT8 with this
    preset's own activation scales and SmoothQuant off. SmoothQuant divides activations by per-channel
    factors from this preset's statistics and multiplies them into the weights, so each preset's INT8
    weights would differ; without it, equal FP32 weights quantize to equal INT8 constants (per channel, from
    the weights alone), which the branches store and pack once (SuperViT-DeiT-S, AVX-512: SmoothQuant off
    measured within the noise of on)."""
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)

    nncf.set_log_level(logging.WARNING)
    calib_batches = list(batches(calib, batch))
    quantized = nncf.quantize(model, nncf.Dataset(calib_batches), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib_batches),
                              advanced_parameters=AdvancedQuantizationParameters(
                                  smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)))
    return quantized, {"tool": f"nncf {nncf.__version__}", "model_type": "transformer", "smooth_quant": "off",
                       "samples": len(calib_batches) * batch, "level": 0}


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
