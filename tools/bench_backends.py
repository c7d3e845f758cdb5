#!/usr/bin/env python
"""edgevit's chosen engine against the peer paths a user would take by hand, in one process, interleaved.

    python tools/bench_backends.py                      # supervit-deit-s at r224-k1, r224-k0.5, r128-k0.5
    python tools/bench_backends.py --presets r224-k1 --rounds 10 --md docs/benchmarks/backends.md

1. Builds a bundle with `edgevit build` (target x86-cpu, the gate opened: the weights are random, so accuracy
   means nothing and latency is what is compared) from a random-weight checkpoint and a small folder of random
   images written here (calibration and validation).
2. Loads it with `edgevit.load(bundle)`, no backend named: the engine each preset runs by default.
3. Beside it, from the very ONNX file the bundle was built from, every path a user gets in a line or two
   (``PEERS``): `openvino.convert_model` compiled with f32 pinned, with the bf16 hint (where the CPU has bf16)
   and with no hint at all, `nncf.quantize` INT8 (transformer model type, as NNCF's guide says for
   transformers), an ONNX Runtime `InferenceSession` with defaults, and ONNX Runtime `quantize_dynamic`.
4. Times them round-robin at batch 1 (each round times every engine back to back, with a 0.25 s pause between
   engines so worker threads go idle), then torch eager FP32 apart, and reports medians, the host's ISA and
   the ratio best-peer / edgevit (>= 1: edgevit is at least as fast).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def random_image_folder(root: Path, size: int, classes: int = 10, per_split=(4, 4, 3)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val", "calib"), per_split):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def build_bundle(model_name: str, presets: list[str], work: Path, log, shared_weights: bool = False,
                 request_interval_ms: float | None = None) -> Path:
    import torch

    from edgevit.build.builder import BuildOptions, build
    from edgevit.build.checkpoints import save_checkpoint
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).eval()
    data = random_image_folder(work / "images", size=round(model.img_size / 0.875))
    ckpt = save_checkpoint(work / "random.pt", model, classes=[f"c{i}" for i in range(10)],
                           data={"name": str(data)})
    return build(BuildOptions(target="x86-cpu", checkpoint=str(ckpt), data=str(data), presets=presets,
                              out=str(work / "bundle"), cache_dir=str(work / "cache"), max_top1_drop=1.0,
                              min_agreement=0.0, include_checkpoint=False, shared_weights=shared_weights,
                              request_interval_ms=request_interval_ms, log=log))


PEERS = ("OV FP32", "OV bf16 hint", "OV default", "NNCF INT8", "ORT FP32", "ORT dynamic INT8")


def peers(onnx_path: Path, calib: np.ndarray, work: Path) -> dict:
    """Every path a user gets from the same ONNX file in a line or two, with the library's defaults except
    where the line names a setting: OpenVINO FP32 (convert_model, f32 pinned: on an AVX512-BF16 CPU the plain
    compile runs bf16), OpenVINO with the bf16 hint (where the CPU has bf16), OpenVINO with no hint at all,
    nncf.quantize (transformer model type), ONNX Runtime FP32 and ONNX Runtime quantize_dynamic."""
    import logging

    import nncf
    import onnxruntime as ort
    import openvino as ov
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgevit.host import cpu_info

    nncf.set_log_level(logging.WARNING)
    core = ov.Core()
    model = ov.convert_model(str(onnx_path))
    # "OV default" and NNCF INT8 are compiled with no precision hint on purpose: they are what a plain one-line
    # compile gives a user (bf16 for float ops on an AVX512-BF16 CPU, f32 elsewhere); the other peers pin it.
    compiled = {"OV FP32": core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
                "OV default": core.compile_model(model, "CPU")}
    if {"avx512_bf16", "amx_bf16"} & set(cpu_info()["features"]):
        compiled["OV bf16 hint"] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    int8 = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset([c[None] for c in calib]),
                         model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    compiled["NNCF INT8"] = core.compile_model(int8, "CPU")
    runs = {}
    for key, c in compiled.items():
        req = c.create_infer_request()
        runs[key] = lambda x, req=req: req.infer({0: x})
    dynamic = work / f"{Path(onnx_path).stem}.dynamic.onnx"
    quantize_dynamic(str(onnx_path), str(dynamic), weight_type=QuantType.QInt8)
    for key, path in (("ORT FP32", onnx_path), ("ORT dynamic INT8", dynamic)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs[key] = lambda x, sess=sess, name=sess.get_inputs()[0].name: sess.run(None, {name: x})
    return {k: runs[k] for k in PEERS if k in runs}


def interleaved(runs: dict, x: np.ndarray, rounds: int, reps: int, pause_s: float = 0.25,
                interval_s: float = 0.0) -> dict[str, list]:
    """Every sample of every run, round-robin (edgevit.measure, as the build and bench time), each request after
    ``interval_s`` idle."""
    from edgevit.measure import interleaved as round_robin, timed

    for fn in runs.values():
        timed(fn, x, iterations=5)
    samples, _ = round_robin(runs, {k: x for k in runs}, rounds, {k: reps for k in runs}, pause_s, interval_s)
    return samples


def flops_lines(m, results: list, cpu: dict) -> list[str]:
    """Does latency follow FLOPs? Each preset's achieved rate against the host's theoretical peak (cores x
    clock x multiply-adds per cycle of its ISA), and the largest over the smallest preset's p50 beside their
    FLOPs ratio, both as this run measured them and as the build's own latency pass did."""
    from edgevit.bench.peak import avx512_per_cycle, cpu_mhz, cpu_vendor_family, theoretical_peak

    mhz = cpu_mhz()
    vendor, family = cpu_vendor_family()
    ports = avx512_per_cycle(vendor, family)
    peak = theoretical_peak(cpu["features"], cpu["cores"], mhz, avx512_ports=ports)
    lines = ["", f"Theoretical peak: {cpu['cores']} cores x {mhz or '?'} MHz x multiply-adds per cycle "
             + ("(two vector ports; AMX: one tile unit a core): " if ports == 2 else
                f"({vendor} family {family}: one 512-bit instruction a cycle, as two 256-bit halves): ")
             + ", ".join(f"{k} {v:.0f} GMAC/s" for k, v in peak.items() if v) + ".", "",
             "| preset | GMAC | edgevit ms | GMAC/s | % of its precision's peak | build's p50 ms |",
             "|---|---|---|---|---|---|"]
    by_name = {r["preset"]: r for r in results}
    for name, r in by_name.items():
        p = m.preset(name)
        e = p.engines[r["backend"]]
        rate = p.flops / 1e9 / (r["ms"]["edgevit"] / 1e3)
        top = peak.get(e.precision)
        r.update(gmacs=p.flops / 1e9, gmac_per_s=rate, fraction_of_peak=rate / top if top else None,
                 build_p50_ms=e.latency("p50"))
        lines.append(f"| {name} | {p.flops / 1e9:.2f} | {r['ms']['edgevit']:.2f} | {rate:.0f} | "
                     + (f"{100 * rate / top:.0f}%" if top else "n/a") + f" | {e.latency('p50') or 'n/a'} |")
    if len(by_name) > 1:
        big = max(by_name, key=lambda n: m.preset(n).flops)
        small = min(by_name, key=lambda n: m.preset(n).flops)
        flops = m.preset(big).flops / m.preset(small).flops
        here = by_name[big]["ms"]["edgevit"] / by_name[small]["ms"]["edgevit"]
        line = f"{big} / {small}: FLOPs {flops:.1f}x, p50 here {here:.1f}x"
        if by_name[big]["build_p50_ms"] and by_name[small]["build_p50_ms"]:
            line += f", in the build's latency pass {by_name[big]['build_p50_ms'] / by_name[small]['build_p50_ms']:.1f}x"
        lines += ["", line + "."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="supervit-deit-s")
    ap.add_argument("--presets", default="r224-k1,r224-k0.5,r128-k0.5")
    ap.add_argument("--rounds", type=int, default=20, help="round-robin rounds (each times every engine)")
    ap.add_argument("--reps", type=int, default=5, help="inferences per engine per round")
    ap.add_argument("--interval-ms", type=float, default=0.0,
                    help="idle before each timed request, as a device serving one every INTERVAL ms (33: 30 fps)")
    ap.add_argument("--bundle", default=None, help="measure this bundle instead of building one")
    ap.add_argument("--work", default=None, help="build in this folder and keep it (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--md", default=None, help="write the Markdown table here")
    ap.add_argument("--shared-weights", action="store_true", help="build with --shared-weights")
    ap.add_argument("--build-only", action="store_true",
                    help="build, print the bundle's memory figures and default engines, and stop")
    args = ap.parse_args()

    import torch

    import edgevit
    from edgevit.bundle import read_manifest
    from edgevit.build.checkpoints import load_checkpoint
    from edgevit.host import cpu_info, tool_versions

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    names = [p.strip() for p in args.presets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.work:
            tmp = args.work
            Path(tmp).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        bundle = (Path(args.bundle) if args.bundle else
                  build_bundle(args.model, names, Path(tmp), log, shared_weights=args.shared_weights,
                             request_interval_ms=args.interval_ms))
        build_s = time.perf_counter() - t0
        m = read_manifest(bundle)
        if args.build_only:
            from edgevit.manifest_report import memory_lines

            print("\n".join(memory_lines(m.to_dict())) or "memory: not measured (this host is not the target)")
            for p in m.presets:
                e = p.engines[p.default_backend()]
                print(f"{p.name}: default {p.default_backend()} {e.chosen['id']}, p50 {e.latency('p50')} ms, "
                      f"resident {e.resident_mb}")
            return 0
        cpu, v = cpu_info(), tool_versions()
        host = (f"{cpu['model']} ({', '.join(cpu['features']) or 'no listed features'}), {cpu['cores']} cores; "
                f"torch {v['torch']}, onnxruntime {v['onnxruntime']}, openvino {v['openvino']}, nncf {v['nncf']}")
        lines = [f"# edgevit's default engine vs peers by hand: {m.model['name']} (random weights), batch 1",
                 "", f"host: {host}", "",
                 f"`python tools/bench_backends.py --presets {args.presets}"
                 + (f" --interval-ms {args.interval_ms:g}" if args.interval_ms else "")
                 + f"`; {args.rounds} rounds x {args.reps} runs per engine"
                 + (f", each after {args.interval_ms:g} ms idle (a device serving a request every "
                    f"{args.interval_ms:g} ms)" if args.interval_ms else "")
                 + ", interleaved with 0.25 s pauses (worker threads go idle between paths); torch "
                 "eager timed apart afterwards (its spinning threads would inflate the others); the same input "
                 "tensor for every path; medians in ms; ratio = best peer / edgevit (>= 1: edgevit at least as "
                 "fast). \"OV default\" is a plain compile_model (on an AVX512-BF16 CPU it runs bf16).", "",
                 "| preset | edgevit default (backend, engine) | edgevit | " + " | ".join(PEERS)
                 + " | torch eager | best peer | ratio |", "|---" * (len(PEERS) + 6) + "|"]
        results = []
        with edgevit.load(bundle) as rt:
            ck = load_checkpoint(bundle / "model.pt").model.eval() if (bundle / "model.pt").is_file() else None
            for name in names:
                p = m.preset(name)
                info = rt.preset(name)
                engine = p.engines[info.backend]
                runner = rt.runner(name)
                rng = np.random.default_rng(0)
                shape = tuple(runner.input_shape)
                x = rng.standard_normal(shape).astype(np.float32)
                calib = rng.standard_normal((32,) + shape[1:]).astype(np.float32)
                runs = {"edgevit": runner.infer, **peers(bundle / p.onnx, calib, Path(tmp))}
                if ck is None:
                    torch.manual_seed(0)
                    from edgevit.models import create_model

                    ck = create_model(m.model["name"], num_classes=len(m.labels)).eval()
                xt = torch.from_numpy(x)

                def eager(_x, p=p, xt=xt):
                    with torch.inference_mode():
                        return ck(xt, p.resolution, p.keep_rate)

                gap = args.interval_ms / 1e3
                s = {k: statistics.median(t) for k, t in interleaved(runs, x, args.rounds, args.reps,
                                                                      interval_s=gap).items()}
                s["torch eager fp32"] = statistics.median(interleaved({"torch": eager}, x, args.rounds, args.reps,
                                                                      interval_s=gap)["torch"])
                peer = {k: t for k, t in s.items() if k not in ("edgevit", "torch eager fp32")}
                best = min(peer, key=peer.get)
                ratio = peer[best] / s["edgevit"]
                results.append({"preset": name, "backend": info.backend, "engine": engine.chosen["id"],
                                "ms": s, "best_peer": best, "ratio": ratio})
                lines.append(f"| {name} | {info.backend} {engine.chosen['id']} | {s['edgevit']:.2f} | "
                             + " | ".join(f"{peer[k]:.2f}" if k in peer else "n/a" for k in PEERS)
                             + f" | {s['torch eager fp32']:.2f} | {best} | **{ratio:.2f}x** |")
                log(lines[-1])
        lines += ["", f"Bundle built in {build_s:.0f} s. Engine mix: "
                  + "; ".join(f"{b}: {c}" for b, c in m.engine_mix["precisions"].items())]
        lines += flops_lines(m, results, cpu)
        text = "\n".join(lines) + "\n"
        print(text)
        if args.md:
            Path(args.md).parent.mkdir(parents=True, exist_ok=True)
            Path(args.md).write_text(text)
        if args.json:
            Path(args.json).write_text(json.dumps({"host": host, "results": results}, indent=2))
    return 0 if all(r["ratio"] >= 0.98 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
