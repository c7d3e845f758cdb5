"""Export one preset to ONNX: static shapes, onnx.checker, simplification, FP32 parity against torch.

Each preset is its own graph (the keep counts are Python ints, the resize target is a constant), so every
engine built from it has fixed shapes, which is what TensorRT, OpenVINO and the INT8 calibrators want.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgevit.errors import EdgevitError

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportReport:
    path: str
    opset: int
    input_shape: list
    output_shape: list
    nodes_before: int
    nodes_after: int
    simplifier: str
    parity_max_abs: float
    parity_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


KEEP_FP32_KEY = "edgevit.int8_keep_fp32"


def export_preset(model, preset, out_path, sample: np.ndarray, opset: int = 17, batch: int = 1,
                  parity_tol: float = 1e-3) -> ExportReport:
    """Export ``model`` at ``preset`` to ``out_path`` and check ONNX Runtime FP32 against torch on ``sample``.

    ``sample`` is a preprocessed (N, C, H, W) float32 array (validation images); parity is the largest
    |logit difference| over it, and must stay under ``parity_tol`` relative to the logits' range.
    """
    import torch

    from edgevit.models.frozen import PresetModule

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module = PresetModule(model, preset.resolution, preset.keep_rate).eval()
    c, h, w = sample.shape[1:]
    dummy = torch.from_numpy(np.ascontiguousarray(np.resize(sample, (batch, c, h, w))))

    keep = getattr(model, "int8_keep_fp32", ())
    # the model family's own quantization constraint travels with the graph (edgevit.build.quantize)
    before, after, simplifier = _export_checked(module, (dummy,), out_path, [INPUT_NAME], None, opset,
                                                {KEEP_FP32_KEY: ",".join(keep)} if keep else None)

    max_abs = _parity(module, out_path, sample, batch)
    ref_range = max(1.0, float(np.abs(_torch_logits(module, sample[:batch])).max()))
    if max_abs > parity_tol * ref_range:
        raise EdgevitError(f"ONNX export of {preset.name} differs from torch by {max_abs:.2e} (tolerance "
                           f"{parity_tol * ref_range:.2e}); the exported graph is not faithful")
    out_shape = [batch, model.num_classes]
    return ExportReport(str(out_path), opset, [batch, c, h, w], out_shape, before, after,
                        simplifier, max_abs, int(max(len(sample), batch) // batch * batch))


def export_shared(model, out_path, sample: np.ndarray, opset: int = 17, batch: int = 1,
                  parity_tol: float = 1e-3) -> dict:
    """Every preset of ``model`` in one ONNX graph (``SharedPresets``): one copy of the weights; a preset is
    chosen by its inputs. Checked like ``export_preset``, with ONNX Runtime against torch at every preset."""
    import torch

    from edgevit.models import family_of

    SharedPresets = family_of(model).shared_presets
    if SharedPresets is None:
        raise EdgevitError(f"{model.variant}: its model family has no shared-weight graph (SuperViT has one); "
                           f"build this model without --shared-weights")
    SHARED_INPUTS = SharedPresets.INPUTS
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # eval() on the wrapper: the exporter restores the wrapper's mode afterwards, and a wrapper left in
    # training mode would switch the model's drop-path on for every later torch reference.
    module = SharedPresets(model).eval()
    presets = model.presets()
    c, h, w = sample.shape[1:]
    dummy = torch.from_numpy(np.ascontiguousarray(np.resize(sample, (batch, c, h, w))))
    first = SharedPresets.preset_inputs(model, presets[0].resolution, presets[0].keep_rate)
    args = (dummy,) + tuple(torch.from_numpy(first[k]) for k in SHARED_INPUTS[1:])
    before, after, simplifier = _export_checked(module, args, out_path, list(SHARED_INPUTS),
                                                SharedPresets.dynamic_axes(), opset)
    model.eval()
    worst, scale = _shared_parity(model, out_path, sample[: max(batch, min(len(sample), 16))], batch)
    if worst > parity_tol * scale:
        raise EdgevitError(f"the shared-weight ONNX export differs from torch by {worst:.2e} (tolerance "
                           f"{parity_tol * scale:.2e}); the exported graph is not faithful")
    return {"path": str(out_path), "opset": opset, "input_shape": [batch, c, h, w], "inputs": list(SHARED_INPUTS),
            "nodes_before": before, "nodes_after": after, "simplifier": simplifier,
            "parity_max_abs": worst, "presets_checked": len(presets)}


def _export_checked(module, args: tuple, out_path: Path, input_names: list, dynamic_axes, opset: int,
                    props: dict | None = None) -> tuple[int, int, str]:
    """``torch.onnx.export`` (TorchScript exporter) of ``module`` to ``out_path``, checked with the ONNX checker
    before and after simplification; returns (nodes before, nodes after, the simplifier used)."""
    import onnx
    import torch

    fd, raw = tempfile.mkstemp(suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
            torch.onnx.export(module, args, raw, input_names=input_names, output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        proto = onnx.load(raw)
        onnx.checker.check_model(proto, full_check=True)
        before = len(proto.graph.node)
        proto, simplifier = _simplify(proto)
        onnx.checker.check_model(proto, full_check=True)
        if props:
            onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(out_path))
    finally:
        if os.path.exists(raw):
            os.unlink(raw)
    return before, len(proto.graph.node), simplifier


def _shared_parity(model, onnx_path, sample: np.ndarray, batch: int) -> tuple[float, float]:
    import onnxruntime as ort
    import torch

    from edgevit.models import family_of

    SharedPresets = family_of(model).shared_presets
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    if len(sample) < batch:
        sample = np.resize(sample, (batch,) + sample.shape[1:])
    worst, scale = 0.0, 1.0
    for p in model.presets():
        feeds = SharedPresets.preset_inputs(model, p.resolution, p.keep_rate)
        for i in range(0, len(sample) - batch + 1, batch):
            xb = np.ascontiguousarray(sample[i:i + batch])
            got = sess.run(None, {k: v for k, v in {INPUT_NAME: xb, **feeds}.items() if k in names})[0]
            with torch.inference_mode():
                ref = model(torch.from_numpy(xb), p.resolution, p.keep_rate).numpy()
            worst = max(worst, float(np.abs(got - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    return worst, scale


def _simplify(proto):
    try:
        import onnxslim

        return onnxslim.slim(proto), f"onnxslim {onnxslim.__version__}"
    except ImportError:
        return proto, "none"


def _torch_logits(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _parity(module, onnx_path, sample, batch) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if len(sample) < batch:  # fewer images than one static batch: repeat them, never skip the check
        sample = np.resize(sample, (batch,) + sample.shape[1:])
    worst = 0.0
    for i in range(0, len(sample) - batch + 1, batch):
        xb = np.ascontiguousarray(sample[i:i + batch])
        got = sess.run(None, {INPUT_NAME: xb})[0]
        worst = max(worst, float(np.abs(got - _torch_logits(module, xb)).max()))
    return worst
