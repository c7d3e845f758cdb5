#!/usr/bin/env python
"""Latency of one model's presets on every CPU backend, as ratios to torch eager FP32, in one process.

    python tools/bench_backends.py --model supervit-deit-s --presets r224-k1,r128-k0.5

Weights are random unless --checkpoint is given (latency does not depend on them; accuracy does, and is
not reported here). INT8 engines are calibrated on random images, which is enough to place the quantizers.
Engines are measured round-robin (torch, ORT FP32, ORT INT8, OV FP32, OV INT8, torch, ...), so drift on a
noisy host hits all of them alike; each figure is the median of many repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgevit.backends.onnxruntime import OrtRunner
from edgevit.backends.openvino import OvRunner
from edgevit.export import export_preset
from edgevit.host import cpu_info, tool_versions
from edgevit.models import create_model
from edgevit.quantize import quantize_onnxruntime, quantize_openvino


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="supervit-deit-s")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--presets", default="r224-k1,r128-k0.5")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--rounds", type=int, default=30, help="round-robin rounds (each times every engine once)")
    ap.add_argument("--reps", type=int, default=5, help="inferences per engine per round")
    ap.add_argument("--calib", type=int, default=32, help="random calibration images for INT8")
    args = ap.parse_args()

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if args.checkpoint:
        from edgevit.checkpoints import load_checkpoint

        model = load_checkpoint(args.checkpoint, args.model).model.eval()
    else:
        torch.manual_seed(0)
        model = create_model(args.model).eval()
    rng = np.random.default_rng(0)
    size = model.img_size
    x = rng.standard_normal((1, model.in_chans, size, size)).astype(np.float32)
    calib = rng.standard_normal((args.calib, model.in_chans, size, size)).astype(np.float32)
    ov_settings = {"inference_precision": "f32", "performance_hint": "LATENCY", "num_streams": 1, "threads": threads}

    print(f"# {args.model} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}), batch 1, "
          f"{threads} threads", file=sys.stderr)
    cpu = cpu_info()
    v = tool_versions()
    print(f"host: {cpu['model']} ({', '.join(cpu['features'])}); torch {v['torch']}, onnxruntime {v['onnxruntime']}, "
          f"openvino {v['openvino']}, nncf {v['nncf']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in [p.strip() for p in args.presets.split(",")]:
            p = model.preset(name)
            print(f"[{name}] exporting and quantizing ...", file=sys.stderr)
            onnx_path = tmp / f"{name}.onnx"
            export_preset(model, p, onnx_path, x, opset=17, batch=1)
            quantize_onnxruntime(onnx_path, tmp / f"{name}.ort-int8.onnx", calib, level=0)
            quantize_openvino(onnx_path, tmp / f"{name}.ov-int8.xml", calib, level=0)
            from edgevit.quantize import convert_openvino_fp32

            convert_openvino_fp32(onnx_path, tmp / f"{name}.ov-fp32.xml")
            engines = {
                "onnxruntime fp32": OrtRunner(onnx_path, threads=threads).infer,
                "onnxruntime int8": OrtRunner(tmp / f"{name}.ort-int8.onnx", threads=threads).infer,
                "openvino fp32": OvRunner(tmp / f"{name}.ov-fp32.xml", ov_settings).infer,
                "openvino int8": OvRunner(tmp / f"{name}.ov-int8.xml", ov_settings).infer,
            }
            xt = torch.from_numpy(x)

            def torch_eager(_x, p=p, xt=xt):
                with torch.inference_mode():
                    return model(xt, p.resolution, p.keep_rate)

            runs = {"torch eager fp32": torch_eager, **engines}
            samples = {k: [] for k in runs}
            for fn in runs.values():           # warm-up
                for _ in range(5):
                    fn(x)
            for _ in range(args.rounds):
                for k, fn in runs.items():
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        fn(x)
                        samples[k].append((time.perf_counter() - t0) * 1e3)
            base = statistics.median(samples["torch eager fp32"])
            print(f"\n{name} ({p.gflops:.2f} GFLOPs), {args.rounds}x{args.reps} runs each, interleaved")
            print("| engine | p50 ms | p90 ms | speed-up vs torch eager |")
            print("|---|---|---|---|")
            for k, s in samples.items():
                med, p90 = statistics.median(s), float(np.percentile(s, 90))
                print(f"| {k} | {med:.2f} | {p90:.2f} | {base / med:.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
