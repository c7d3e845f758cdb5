"""ONNX Runtime's shared-weight engine built from every preset's static graph: each preset keeps its own static
graph (static shapes, static-engine speed), and all of them read their weights from one file.

Each preset's graph is quantized with ``quantize_dynamic`` (INT8 weights from the weights alone, so equal
weights quantize to equal tensors), then every initializer of 4 KiB or more is written once into
``<stem>.weights.bin`` and each graph points at it (ONNX external data, 4 KiB aligned). ONNX Runtime maps
that file instead of copying it, so a process with every preset loaded holds the weights once; prepacking is
off (``session.disable_prepacking``), because a prepacked copy per session would undo that. ONNX Runtime
refuses external data outside the model's folder, and the runner names the file when it does.

On the 2-core AVX-512 VNNI/BF16 host, SuperViT-DeiT-S, 12 presets: 145 MB (PSS) against 394 MB for twelve
separate dynamic-INT8 sessions, at 1.06-1.16x their latency (no prepacking); docs/benchmarks/
shared-ort-presets-deit-s-avx512.md. ``branches.py`` puts the same graphs in one session (one thread pool,
the weights in the model itself).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgevit.errors import EdgevitError

MIN_SHARED_BYTES = 4096
ALIGN = 4096
SESSION_CONFIG = {"session.disable_prepacking": "1"}


def build(sources_json, out_dir: Path, stem: str) -> tuple[list[str], str, dict]:
    """(each preset's graph file, the weights file, the quantization record), file names relative to
    ``out_dir``, in the sources' branch order."""
    import tempfile

    import onnx
    from onnx import TensorProto, numpy_helper

    from edgevit.backends.onnxruntime.quantize import quantize_onnxruntime_dynamic
    from edgevit.build.shared import read_sources

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_name = f"{stem}.weights.bin"
    offsets: dict[tuple, tuple[int, int]] = {}
    graphs, quant, stored = [], {}, 0
    with open(out_dir / weights_name, "wb") as w, tempfile.TemporaryDirectory(prefix="edgevit-ort-presets-") as tmp:
        for i, (name, onnx_path) in enumerate(read_sources(sources_json)):
            q = Path(tmp) / f"{i}.onnx"
            quant = quantize_onnxruntime_dynamic(onnx_path, q)
            model = onnx.load(str(q))
            for init in model.graph.initializer:
                data = numpy_helper.to_array(init).tobytes()
                if len(data) < MIN_SHARED_BYTES:
                    continue
                key = (init.name, init.data_type, tuple(init.dims), hashlib.sha256(data).hexdigest())
                if key not in offsets:
                    w.write(b"\0" * (-w.tell() % ALIGN))
                    offsets[key] = (w.tell(), len(data))
                    w.write(data)
                    stored += len(data)
                offset, length = offsets[key]
                for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    init.ClearField(f)
                init.data_location = TensorProto.EXTERNAL
                del init.external_data[:]
                for k, v in (("location", weights_name), ("offset", str(offset)), ("length", str(length))):
                    entry = init.external_data.add()
                    entry.key, entry.value = k, v
            graph_name = f"{stem}.b{i}.onnx"
            onnx.save(model, str(out_dir / graph_name))
            graphs.append(graph_name)
    if not graphs:
        raise EdgevitError(f"{sources_json}: no preset graphs to build")
    return graphs, weights_name, {**quant, "weights_file": weights_name, "weights_stored_mb": round(stored / 2**20, 1),
                                  "presets": len(graphs)}
