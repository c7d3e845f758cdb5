#!/usr/bin/env python
"""Disk taken by a TensorRT bundle's kit: the ONNX files every preset's engine is built from, before and after
their weights are stored once (``edgevit.backends.tensorrt.kit.share_weights``, what every TensorRT build does).

    python tools/bench_trt_kit.py                          # supervit-deit-s, random weights, all 12 presets
    python tools/bench_trt_kit.py --model supervit-nano --md docs/benchmarks/trt-kit-nano.md

No TensorRT is needed: the files are what a jetson-orin / desktop-gpu build writes for FP32 and FP16 (INT8
Q/DQ adds per-preset activation scales, a few KB). The plans built from them on the device are
weight-stripped (``tensorrt.strip_weights``) and refitted from this one copy at load.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def mb(paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2 ** 20


def kit_sizes(model, log) -> list[tuple]:
    """(precision, one preset MB, all presets MB, all presets with weights stored once MB, share_weights stats)."""
    from edgevit.backends.tensorrt.kit import KIT_DIR, WEIGHTS_FILE, share_weights
    from edgevit.build.export import export_preset
    from edgevit.backends.onnxruntime.quantize import convert_fp16

    presets = model.presets()
    sample = np.random.default_rng(0).standard_normal((1, 3, model.img_size, model.img_size)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for p in presets:
            log(f"[export] {p.name}")
            export_preset(model, p, tmp / f"{p.name}.onnx", sample, opset=17, batch=1)
        for precision in ("fp32", "fp16"):
            kit = tmp / precision
            rels = [(KIT_DIR / f"{p.name}.{precision}.onnx").as_posix() for p in presets]
            for p, rel in zip(presets, rels):
                (kit / rel).parent.mkdir(parents=True, exist_ok=True)
                write = convert_fp16 if precision == "fp16" else shutil.copyfile
                write(tmp / f"{p.name}.onnx", kit / rel)
            one, before = mb([kit / rels[-1]]), mb([kit / r for r in rels])
            stats = share_weights(kit, rels)
            after = mb([kit / r for r in rels] + [kit / WEIGHTS_FILE])
            rows.append((precision, one, before, after, stats))
            log(f"[kit] {precision}: one preset {one:.1f} MB, {len(rels)} presets {before:.1f} MB -> {after:.1f} MB")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="supervit-deit-s")
    ap.add_argument("--md", default=None)
    args = ap.parse_args()

    import torch

    from edgevit.host import cpu_info
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    rows = kit_sizes(model, lambda m: print(m, file=sys.stderr, flush=True))
    cpu = cpu_info()
    out = [f"# TensorRT kit on disk: {args.model} (random weights), {len(model.presets())} presets", "",
           f"host: {cpu['model']} ({', '.join(cpu['features'])}); `python tools/bench_trt_kit.py --model {args.model}`",
           "", "| precision | one preset's ONNX | all presets, each with its weights | all presets, weights stored "
           "once | shared / one preset | distinct tensors |", "|---|---|---|---|---|---|"]
    out += [f"| {p} | {one:.1f} MB | {before:.1f} MB | {after:.1f} MB | **{after / one:.2f}x** | {s['tensors']} |"
            for p, one, before, after, s in rows]
    if args.md:
        md = Path(args.md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
