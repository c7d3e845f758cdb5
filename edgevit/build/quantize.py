"""INT8 quantization, the part every backend shares: the protection levels and the graph inspection that
names what each level keeps in FP32. Each backend's quantizers live in its own package
(``edgevit.backends.<name>.quantize``) and make its candidates; the build validates every candidate,
measures those that pass, and ships the fastest (``edgevit.build.selection``).

Levels, tried in order until a preset passes the profile's accuracy gate (the builder runs the gate):

* ``0``: the transformer default. ONNX Runtime quantizes only MatMul/Gemm/Conv (QDQ, per-channel symmetric
  weights), so LayerNorm, Softmax and GELU stay in FP32; OpenVINO uses NNCF's post-training quantization with
  the transformer model type, which keeps the same operations in floating point.
* ``1``: additionally keeps in FP32 the classifier head, the activation-by-activation MatMuls (attention's q.k
  and attn.v) and the projections that feed token selection (SuperViT's TopK); for OpenVINO, NNCF's
  accuracy-controlled quantization with the head ignored, measured as agreement with the FP32 model on the
  calibration split (never the validation split, which reports the result).

OpenVINO is quantized from its own model, never by re-using ONNX Runtime's QDQ file: OpenVINO's low-precision
transformations could not compile ORT's QDQ ViT (docs/architecture.md, "Backends").
"""

from __future__ import annotations

import numpy as np

LEVELS = (0, 1)
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

    from edgevit.build.export import KEEP_FP32_KEY

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return [g for g in props.get(KEEP_FP32_KEY, "").split(",") if g]
