"""Linear against quadratic attention: latency and peak memory against input resolution, measured in one run.

VVT (vicinity attention, linear in the number of tokens) against a softmax-attention ViT of similar cost at
224 px (SuperViT-DeiT-S at keep rate 1.0, its patch grid growing with the input), both exported to ONNX and
run in FP32 on ONNX Runtime and OpenVINO. Weights are random: cost does not depend on them.

Each (model, resolution, backend) is measured in its own subprocess, so its peak resident memory (ru_maxrss)
is its own; latency is the median of repeated single-image inferences after a warm-up, models interleaved
per resolution so slow drifts of this machine hit both alike.

    python tools/bench_vvt_scaling.py                       # 224..1024, writes bench/vvt-scaling.{md,json,png}
    python tools/bench_vvt_scaling.py --resolutions 224,512 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"vvt-tiny": "VVT-tiny (linear attention)", "supervit-deit-s": "DeiT-S (softmax attention, keep 1.0)"}


def measure(backend: str, onnx_path: str, threads: int, reps: int, min_seconds: float) -> dict:
    """Runs in a fresh process: load, warm up, time single-image inferences; report peak RSS."""
    import numpy as np

    if backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).random([d for d in inp.shape], np.float32)

        def run():
            sess.run(None, {inp.name: x})
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(onnx_path, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        x = np.random.default_rng(0).random(list(compiled.input(0).shape), np.float32)
        req = compiled.create_infer_request()

        def run():
            req.infer({0: x})
    loaded_rss = _status_mb("VmRSS")
    run()                                           # warm-up (first-run allocations, kernel selection)
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < reps or (time.perf_counter() < t_end and len(times) < 200):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = _status_mb("VmHWM")
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": len(times),
            "peak_rss_mb": peak, "loaded_rss_mb": loaded_rss}


def _status_mb(field: str) -> float:
    # VmHWM belongs to this process's address space, which exec made new; ru_maxrss would carry over the
    # parent's high-water mark from before the fork.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def export(name: str, resolution: int, out: Path) -> dict:
    import numpy as np
    import torch

    from edgevit.build.export import export_preset
    from edgevit.models import create_model

    torch.manual_seed(0)
    extra = {"keep_rates": [1.0]} if name.startswith("supervit") else {}
    model = create_model(name, resolutions=[resolution], **extra).eval()
    preset = model.presets()[0]
    sample = np.random.default_rng(0).random((1, 3, resolution, resolution), np.float32)
    export_preset(model, preset, out, sample)
    tokens = (resolution // 16) ** 2 + 1 if name.startswith("supervit") else (resolution // 4) ** 2
    return {"gmacs": preset.flops / 1e9, "params": preset.params, "tokens": tokens}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", default="224,320,448,512,640,768,1024")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=5, help="At least this many timed runs per point.")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="And at least this long per point.")
    ap.add_argument("--out", default="bench/vvt-scaling", help="Output prefix (.md, .json, .png).")
    args = ap.parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    backends = args.backends.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in resolutions:
            for name in MODELS:                     # interleaved: both models at each resolution in turn
                onnx_path = Path(tmp) / f"{name}-{r}.onnx"
                info = export(name, r, onnx_path)
                for b in backends:
                    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); "
                            f"from bench_vvt_scaling import measure; "
                            f"print(json.dumps(measure({b!r}, {str(onnx_path)!r}, {args.threads}, {args.reps}, "
                            f"{args.min_seconds})))")
                    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})
                    if proc.returncode != 0:
                        print(proc.stderr[-2000:], file=sys.stderr)
                        return 1
                    m = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append({"model": name, "resolution": r, "backend": b, **info, **m})
                    print(f"{name:<16} {r:>5} px {b:<12} {info['gmacs']:8.2f} GMACs  {m['median_ms']:9.1f} ms  "
                          f"peak {m['peak_rss_mb']:7.0f} MB  ({m['runs']} runs)", flush=True)
                onnx_path.unlink()
    write_outputs(rows, resolutions, backends, Path(args.out), args)
    return 0


def ratios(rows, lo: int, hi: int) -> dict:
    out = {}
    for r in rows:
        if r["resolution"] == hi:
            base = next(x for x in rows if x["model"] == r["model"] and x["backend"] == r["backend"]
                        and x["resolution"] == lo)
            out[(r["model"], r["backend"])] = {"latency": r["median_ms"] / base["median_ms"],
                                               "memory": r["peak_rss_mb"] / base["peak_rss_mb"],
                                               "gmacs": r["gmacs"] / base["gmacs"]}
    return out


def write_outputs(rows, resolutions, backends, out: Path, args) -> None:
    from edgevit.host import cpu_info, tool_versions

    out.parent.mkdir(parents=True, exist_ok=True)
    lo, hi = min(resolutions), max(resolutions)
    rt = ratios(rows, lo, hi)
    cpu = cpu_info()
    v = tool_versions()
    lines = ["# Latency and memory against resolution: linear (VVT) vs softmax attention", "",
             f"Host: {cpu['model']}, {args.threads} threads; onnxruntime {v['onnxruntime']}, openvino {v['openvino']}; "
             f"FP32, batch 1, median of at least {args.reps} runs and {args.min_seconds} s per point; peak RSS of a "
             f"fresh process per point. Command: `python tools/bench_vvt_scaling.py --resolutions "
             f"{','.join(map(str, resolutions))}`.", "",
             "| model | backend | res | tokens | GMACs | median ms | p90 ms | peak RSS MB | peak - loaded MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['resolution']} | {r['tokens']} | {r['gmacs']:.2f} | "
                     f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] - r['loaded_rss_mb']:.0f} |")
    lines += ["", f"Ratio {hi} px / {lo} px ({(hi / lo) ** 2:.1f}x the pixels):", "",
              "| model | backend | latency | peak memory | GMACs |", "|---|---|---|---|---|"]
    for (m, b), x in rt.items():
        lines.append(f"| {m} | {b} | {x['latency']:.1f}x | {x['memory']:.2f}x | {x['gmacs']:.1f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"schema": "edgevit-vvt-scaling", "schema_version": 1,
                                                    "rows": rows, "ratios": {f"{m}/{b}": x for (m, b), x in rt.items()},
                                                    "threads": args.threads, "cpu": cpu, "tools": v}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, label in MODELS.items():
        for b, style in zip(backends, ("-o", "--s")):
            pts = [r for r in rows if r["model"] == name and r["backend"] == b]
            xs = [p["resolution"] for p in pts]
            ax1.plot(xs, [p["median_ms"] for p in pts], style, label=f"{label}, {b}")
            ax2.plot(xs, [p["peak_rss_mb"] for p in pts], style, label=f"{label}, {b}")
    for ax, title in ((ax1, "median latency (ms, log)"), (ax2, "peak RSS (MB)")):
        ax.set_xlabel("input resolution (px)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print("\n".join(lines[-(len(rt) + 4):]))
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
