"""OpenVINO shared-weight engine as branches: every preset's static graph in one IR, behind a tree of ``If``
nodes that a ``preset`` input steers, each weight tensor stored once.

Why not only the dynamic-shape graph (``SharedPresets``) on OpenVINO: the CPU plugin redoes shape work on
every request of a dynamic graph (1.5-2 ms on SuperViT-DeiT-S, 7-11 % of a small preset; INT8 on an AMX
host 1.2-1.3x the static engines) and re-prepares its kernels when the shapes change (a preset switch: ~1.8
ms). It holds less (INT8: 1.4x one preset, the branches 2.5x), so the build measures both
(``quantize.quantize_graph``) and a memory budget can take it. Why not twelve static compiled models of one IR:
the plugin keeps repacked weights per compiled model, so twelve of them hold twelve copies (10.6x one).

Inside one compiled model the plugin keys repacked weights by the address of the constant's data and the
packed layout (``DnnlExtensionUtils::computeWeightsStringHash``, MLAS ``gemm_mlas_<N>_<K>_<size>_<ptr>``), so
branches whose constants are the same ``Constant`` share one packed copy; ``save_model`` writes equal
constants to the ``.bin`` once and a read IR points them at the same bytes. Each branch keeps static shapes:
the plugin runs it like the preset's own static engine. One exception: a packed layout that depends on the
token count is packed again per branch, which an FP32 matmul with a fused activation has
(``_keep_fc_unfused``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgevit.backends.shared import BRANCH_INPUT
from edgevit.errors import EdgevitError


# Activations the CPU plugin fuses into the FullyConnected before them as a post-op, and the data moves it
# lifts them over to get there.
_FUSED_ACTIVATIONS = frozenset({"Gelu", "Relu", "Swish", "Sigmoid", "Tanh", "Clamp", "Elu", "HSwish", "HSigmoid",
                                "Mish", "SoftPlus"})
_DATA_MOVES = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose"})


def _keep_fc_unfused(model) -> int:
    """Put ``Maximum(x, x)`` (x, exactly) between each matmul and the activation after it; returns how many.

    Why: an FP32 FullyConnected with a fused activation leaves MLAS (which packs a weight once, whatever the
    token count) for oneDNN brgemm, whose packed layout depends on the token count, so every branch with
    other token counts packs those weights again: SuperViT-DeiT-S's 12 fc1+GELU layers, 2.4 MB each, per
    resolution and keep rate (AVX2: 377 MB for the 12 branches, 347 MB with this). The activation then runs
    in the eltwise kernel it joins, measured no slower (AVX2, DeiT-S: 0.96-1.03x the static engine, against
    1.02-1.05x fused). ``Maximum(x, x)`` is x for every float, NaN included; a second consumer of the
    matmul's output is what stops the fusion, and no pass folds it away.
    """
    from openvino import opset8 as ops

    def constant(value) -> bool:     # a weight or bias, possibly behind the Convert of a compressed one
        node = value.get_node()
        if node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    def weight_matmul(value) -> bool:
        node = value.get_node()
        return node.get_type_name() == "MatMul" and constant(node.input_value(1))

    guarded = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _FUSED_ACTIVATIONS:
            continue
        # The plugin moves an activation up through reshapes and transposes (MoveEltwiseUpThroughDataMov)
        # before it fuses, so look through them and guard the matmul's own output.
        into, src = op.input(0), op.input_value(0)
        while src.get_node().get_type_name() in _DATA_MOVES and len(src.get_target_inputs()) == 1:
            into, src = src.get_node().input(0), src.get_node().input_value(0)
        node = src.get_node()
        if node.get_type_name() == "Add":     # the bias add the plugin folds into the matmul
            a, b = node.input_values()
            fc = (weight_matmul(a) and constant(b)) or (weight_matmul(b) and constant(a))
        else:
            fc = weight_matmul(src)
        if fc:
            into.replace_source_output(ops.maximum(src, src).output(0))
            guarded += 1
    return guarded


def _dedup_into(model, seen: dict) -> int:
    """Point every constant of ``model`` equal to one in ``seen`` (type, shape and bytes) at that one, and add
    the rest to ``seen``; returns how many were replaced. One model at a time, so a replaced copy is freed
    before the next model is read."""
    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        data = np.ascontiguousarray(op.get_data())
        key = (str(op.get_element_type()), tuple(op.get_shape()), hashlib.sha1(data.view(np.uint8)).hexdigest())
        keep = seen.setdefault(key, op)
        if keep is not op:
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(keep.output(0))
            replaced += 1
    return replaced


def assemble(models: list, names: list[str]):
    """One ``ov.Model``: ``models`` (one image input and one output each, the same shapes) as branches;
    input ``preset`` = i runs ``models[i]``. A balanced binary tree of ``If``: depth ceil(log2 n)."""
    import openvino as ov
    from openvino import opset8 as ops

    if not models:
        raise EdgevitError("no preset graphs to put behind branches")
    shapes = set()
    for name, m in zip(names, models):
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise EdgevitError(f"preset {name}: its graph has {len(m.inputs)} inputs and {len(m.outputs)} outputs; "
                               f"a branch takes one image and gives one output")
        shapes.add((str(m.inputs[0].get_partial_shape()), str(m.outputs[0].get_partial_shape())))
    if len(shapes) != 1:
        raise EdgevitError(f"the preset graphs take or give different shapes {sorted(shapes)}; branches of one "
                           f"engine need the same image and output shapes")
    in_port, out_port = models[0].inputs[0], models[0].outputs[0]
    image_shape, image_type = in_port.get_partial_shape(), in_port.get_element_type()

    def tree(idx: list[int], preset, image):
        half = len(idx) // 2
        node = ops.if_op(ops.less(preset, ops.constant(np.int64(idx[half]))).output(0))
        bodies = []
        for part in (idx[:half], idx[half:]):
            p = ops.parameter([], np.int64)
            if len(part) == 1:
                leaf = models[part[0]]
                x = leaf.get_parameters()[0]
                body = ov.Model(leaf.get_results(), [x, p], names[part[0]])
            else:
                x = ops.parameter(image_shape, image_type)
                body = ov.Model([ops.result(tree(part, p.output(0), x.output(0)))], [x, p])
            bodies.append((body, x, p))
        (then_b, then_x, then_p), (else_b, else_x, else_p) = bodies
        node.set_then_body(then_b)
        node.set_else_body(else_b)
        node.set_input(image, then_x, else_x)
        node.set_input(preset, then_p, else_p)
        return node.set_output(then_b.get_results()[0], else_b.get_results()[0])

    preset = ops.parameter([], np.int64, name=BRANCH_INPUT)
    preset.output(0).set_names({BRANCH_INPUT})
    if len(models) == 1:   # nothing to choose; the input stays so a binding works the same
        return ov.Model(models[0].get_results(), [models[0].get_parameters()[0], preset], "presets")
    image = ops.parameter(image_shape, image_type, name=in_port.get_any_name())
    image.output(0).set_names({in_port.get_any_name()})
    out = tree(list(range(len(models))), preset.output(0), image.output(0))
    result = ops.result(out)
    result.output(0).set_names({out_port.get_any_name()})
    return ov.Model([result], [image, preset], "presets")


def build(sources_json, out_xml, weights: str = "fp32", unfuse: bool | None = None, calib=None,
          batch: int = 1) -> dict:
    """Read the presets' static ONNX graphs listed in ``sources_json`` (``shared_build.write_sources``), in
    branch order; ``weights`` "int8" compresses each with NNCF (INT8 weights, FP32 activations: equal weights
    compress to equal constants, so they are still stored once); "int8-static" quantizes each preset's graph
    with its own activation scales from ``calib`` (``quantize_branch``: SmoothQuant off, so the INT8 weights
    are still equal). ``unfuse`` (default: FP32 weights) keeps activations out of the matmuls, for an engine
    that runs in FP32 (``_keep_fc_unfused``); a bf16 one runs oneDNN either way. Writes the branches IR."""
    import openvino as ov

    from edgevit.backends.openvino.quantize import compress_openvino_model, quantize_branch
    from edgevit.build.shared import read_sources

    unfuse = weights == "fp32" if unfuse is None else unfuse
    models, names, seen, replaced, guarded = [], [], {}, 0, 0
    report = {"tool": f"openvino {ov.__version__} convert_model", "level": None}
    for name, onnx_path in read_sources(sources_json):
        # NNCF quantizes the graph read_model gives as the per-preset INT8 engines do; the one convert_model
        # gives lost agreement (supervit-nano r32-k1: 89 % against 100 % with the same calibration).
        m = ov.Core().read_model(str(onnx_path)) if weights == "int8-static" else ov.convert_model(str(onnx_path))
        if weights == "int8":
            m, report = compress_openvino_model(m)
        elif weights == "int8-static":
            if calib is None:
                raise EdgevitError("branches with activation scales per preset need calibration images")
            m, report = quantize_branch(m, calib, batch)
        if unfuse:
            guarded += _keep_fc_unfused(m)
        replaced += _dedup_into(m, seen)
        models.append(m)
        names.append(name)
    model = assemble(models, names)
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return {**report, "branches": names, "constants_shared": replaced, "activations_unfused": guarded}
