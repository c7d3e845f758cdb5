"""ONNX Runtime's branches engine: every preset's static dynamic-INT8 graph as a branch of one model.

One ONNX file holds, for each preset, an ``If`` node of the outer graph on ``preset == i`` (the int64 input
``backends.shared.BRANCH_INPUT``) whose then-branch is that preset's graph, quantized with
``quantize_dynamic`` (weights only, so equal weights quantize to equal tensors), and whose else-branch gives
an empty batch; a ``Concat`` of the outputs is the selected preset's logits, exactly. The initializers are
stored once, in the outer graph, and the branches read them from there. It is the presets engine
(``presets.py``: a session per preset over one weights file) in one session: one thread pool instead of one
per preset, so a switch does not wait for the threads of another session, which spin for a while after each
request on a 2-core CPU (SuperViT-DeiT-S, AMX host: switch p99 beyond the host's jitter 13-15 ms with a
session per preset, within the jitter in one).

Why one If per preset and not a tree of them: ONNX Runtime prepacks an outer-scope weight for the MLAS kernels
only where the subgraph using it is a direct child of the graph holding it, and keeps one packed copy for
all of them. A balanced tree put the presets two to four levels down, where nothing was prepacked: 1.08-1.18x
the per-preset sessions (SuperViT-DeiT-S, 12 presets, Zen 4 host); the flat form is 1.01-1.04x at 114 MB, the
tree 108 MB. The If nodes whose preset is not selected cost about 1 us each.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgevit.backends.shared import BRANCH_INPUT
from edgevit.errors import EdgevitError


def _leaf(model, index: int, shared: dict, image: str):
    """Preset ``index``'s graph as an If body: its initializers moved to ``shared`` (one per distinct tensor),
    every other name prefixed so that branches do not collide; the image stays the outer input."""
    from onnx import helper, numpy_helper

    graph, prefix = model.graph, f"b{index}/"
    rename = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), hashlib.sha256(array.tobytes()).hexdigest())
        if key not in shared:
            shared[key] = numpy_helper.from_array(array, f"w{len(shared)}")
        rename[init.name] = shared[key].name
    name = lambda v: v if v in ("", image) else rename.get(v, prefix + v)  # noqa: E731
    nodes = []
    for node in graph.node:
        if any(a.g.node or a.graphs for a in node.attribute):
            raise EdgevitError(f"preset graph {index}: node {node.name or node.op_type} has a subgraph; the "
                               f"branches engine takes graphs without control flow")
        nodes.append(helper.make_node(node.op_type, [name(v) for v in node.input], [name(v) for v in node.output],
                                      prefix + node.name, domain=node.domain or None))
        nodes[-1].attribute.extend(node.attribute)
    out = graph.output[0]
    return helper.make_graph(nodes, f"preset{index}", [], [helper.make_tensor_value_info(
        name(out.name), out.type.tensor_type.elem_type, None)])


def _select(bodies: list, out, batch_free_dims: list[int]) -> list:
    """Nodes that set ``out`` to the output of branch ``BRANCH_INPUT``: one If per branch on ``preset == i``,
    the others giving an empty batch, concatenated."""
    import numpy as np
    from onnx import helper, numpy_helper

    elem = out.type.tensor_type.elem_type
    empty = numpy_helper.from_array(np.zeros([0, *batch_free_dims], helper.tensor_dtype_to_np_dtype(elem)))
    nodes, outs = [], []
    for i, body in enumerate(bodies):
        v = f"select{i}/"   # the branches' own names are prefixed b<i>/, so these cannot collide with them
        skip = helper.make_graph([helper.make_node("Constant", [], [v + "empty"], value=empty)], v + "skip", [],
                                 [helper.make_tensor_value_info(v + "empty", elem, None)])
        nodes += [helper.make_node("Constant", [], [v + "index"], value=numpy_helper.from_array(np.array(i, np.int64))),
                  helper.make_node("Equal", [BRANCH_INPUT, v + "index"], [v + "is"]),
                  helper.make_node("If", [v + "is"], [v + "out"], name=f"preset{i}", then_branch=body,
                                   else_branch=skip)]
        outs.append(v + "out")
    return nodes + [helper.make_node("Concat", outs, [out.name], axis=0)]


def build(sources_json, out_path: Path) -> dict:
    """Writes the engine to ``out_path``; returns its quantization record."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    from edgevit.backends.onnxruntime.quantize import quantize_onnxruntime_dynamic
    from edgevit.build.shared import read_sources

    shared, bodies, names, first, quant, opsets = {}, [], [], None, {}, {}
    with tempfile.TemporaryDirectory(prefix="edgevit-ort-branches-") as tmp:
        for i, (name, onnx_path) in enumerate(read_sources(sources_json)):
            quant = quantize_onnxruntime_dynamic(onnx_path, Path(tmp) / f"{i}.onnx")
            model = onnx.load(str(Path(tmp) / f"{i}.onnx"))
            g = model.graph
            if len(g.input) != 1 or len(g.output) != 1:
                raise EdgevitError(f"preset {name}: its graph has {len(g.input)} inputs and {len(g.output)} "
                                   f"outputs; a branch takes one image and gives one output")
            first = first or (g.input[0], g.output[0])
            if (g.input[0].SerializeToString(), g.output[0].type.SerializeToString()) != \
                    (first[0].SerializeToString(), first[1].type.SerializeToString()):
                raise EdgevitError(f"preset {name}: its image input or output differs from the first preset's; "
                                   f"branches of one engine take the same image and give the same output")
            bodies.append(_leaf(model, i, shared, g.input[0].name))
            names.append(name)
            opsets.update({o.domain: max(o.version, opsets.get(o.domain, 0)) for o in model.opset_import})
    if not bodies:
        raise EdgevitError(f"{sources_json}: no preset graphs to build")
    out = first[1]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
    if len(dims) < 1 or None in dims[1:]:
        raise EdgevitError(f"preset {names[0]}: its output {out.name} has shape {dims}; the branches engine "
                           f"takes graphs whose output is fixed but for its batch")
    nodes = _select(bodies, out, dims[1:])
    branch = helper.make_tensor_value_info(BRANCH_INPUT, TensorProto.INT64, [])
    graph = helper.make_graph(nodes, "presets", [first[0], branch], [first[1]], list(shared.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 8   # what every supported onnxruntime reads
    onnx.checker.check_model(model)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    stored = sum(t.ByteSize() for t in shared.values())
    return {**quant, "branches": names, "weights_stored_mb": round(stored / 2**20, 1)}
