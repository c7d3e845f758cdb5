#!/usr/bin/env python
"""Shared-weight engines against per-preset static engines: memory, disk, latency and switch cost.

    python tools/bench_shared.py                       # supervit-deit-s, random weights, all 12 presets
    python tools/bench_shared.py --model supervit-nano --md docs/benchmarks/shared-nano.md

For each backend and precision (OpenVINO FP32, INT8 weights and calibrated INT8, ONNX Runtime FP32 and
dynamic INT8) it writes the 12 static engines, one per preset, and the one shared-weight engine
`edgevit build --shared-weights` makes, with the build's own functions: on OpenVINO the branches engine
(every preset's static graph behind If, ``backends.openvino.branches``; FP32, INT8 weights by NNCF
``compress_weights``, whose static engines are that recipe per preset, and ``int8-branches``, each preset
quantized by NNCF with its own activation scales, against the per-preset build's default NNCF INT8 engines)
and, as further rows, the dynamic-shape graph in FP32 (``openvino.shared_graph: dynamic``) and in INT8
(``int8-graph``: NNCF on the one graph, calibrated on every preset's inputs in turn, against the same NNCF
INT8 engines per preset); on ONNX Runtime the
dynamic-shape graph (``SharedPresets``) and the presets engine (every preset's static dynamic-INT8 graph over
one weights file, ``backends.onnxruntime.presets``: a session per preset, so a switch is choosing another
session) and the branches engine (the same graphs as branches of one model, ``backends.onnxruntime.branches``:
one session). ``--kinds`` picks rows. Then:

* disk: the engine files of one preset, of all 12, and of the shared engine (+ its per-preset inputs);
* memory: growth of the proportional set size (PSS: a file mapped by several sessions counts once) of a fresh
  process that loads one preset, then of one that loads all 12 (each preset run once, so lazily allocated
  buffers count), static and shared;
* latency: every static and shared preset runner in one process, interleaved, batch 1, p50 per preset;
* switching: a switch to a random other preset on the shared engine, then three requests on it: the first
  minus the second is what the switch costs; the third minus the second, two requests with no switch
  between them, is the host's jitter measured the same way (p50 and p99 of each). On a shared 2-core host
  the p99 of either is the host's (several ms); what a switch adds at p99 is the one p99 minus the other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, psutil, numpy as np
spec = json.loads(sys.argv[1])
proc = psutil.Process()
from edgevit.backends.shared import SharedRunner, preset_feeds
from edgevit.backends.onnxruntime.runner import OrtRunner
from edgevit.backends.openvino.runner import OvRunner
from edgevit.measure import resident_mb
import onnxruntime, openvino   # the libraries' own import cost is not the engines'
before = resident_mb()
make = ((lambda p: OvRunner(p, spec["settings"])) if spec["backend"] == "openvino" else
        (lambda p: OrtRunner(p, session_config=spec.get("session_config"))))
x = np.zeros(spec["shape"], np.float32)
runners = []
if spec["shared"] == "presets":     # a session per preset over one weights file
    runners = [make(f) for f in spec["files"]]
elif spec["shared"]:
    base = make(spec["files"][0])
    for b in spec["bindings"]:      # as the runtime reads a shared bundle: arrays from the file, lengths
        runners.append(SharedRunner(base, preset_feeds(spec["bundle"], b), None))
else:
    runners = [make(f) for f in spec["files"]]
for r in runners:
    r.infer(x)
print(json.dumps({"rss_mb": resident_mb() - before}))
"""


def child_rss(spec: dict) -> float:
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["rss_mb"]


def mb(paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2 ** 20


def _switch_cost(runners: dict, x: np.ndarray, switches: int) -> tuple:
    """A switch is choosing another preset's inputs on the same engine. Each trial switches to a random other
    preset and times three requests on it: the first after the switch (t1) and two more (t2, t3). The switch's
    cost is t1 - t2; t3 - t2, two requests that follow no switch, is the host's own jitter measured the same
    way. Returns p50 and p99 of each, what a switch adds at p99 (the one p99 minus the other) with its 95 %
    bootstrap interval over trials (on a noisy host a p99 rests on a few trials: the interval says how far it
    can move), and the number of switches."""
    rng = np.random.default_rng(1)
    names, cur = list(runners), None
    cost, null = [], []
    for _ in range(switches):
        nxt = names[int(rng.integers(len(names)))]
        if nxt == cur:
            continue
        t = []
        for _ in range(3):
            t0 = time.perf_counter()
            runners[nxt].infer(x)
            t.append((time.perf_counter() - t0) * 1e3)
        cost.append(t[0] - t[1])
        null.append(t[2] - t[1])
        cur = nxt
    cost, null = np.asarray(cost), np.asarray(null)
    q = lambda a, p: float(np.percentile(a, p))  # noqa: E731
    # Trials resampled as pairs: a trial's cost and jitter share its t2 and its moment of the host.
    idx = rng.integers(len(cost), size=(2000, len(cost)))
    beyond = np.percentile(cost[idx], 99, axis=1) - np.percentile(null[idx], 99, axis=1)
    lo, hi = (float(v) for v in np.percentile(beyond, [2.5, 97.5]))
    return q(cost, 50), q(cost, 99), q(null, 50), q(null, 99), q(cost, 99) - q(null, 99), lo, hi, len(cost)


def _paired_ratio(shared_rounds, static_rounds) -> float:
    """shared / static as the median over rounds of each round's ratio: the two ran back to back in every
    round, so a slow spell of the host (frequent on a shared 2-core VM) moves both, not the ratio."""
    return float(np.median(np.asarray(shared_rounds) / np.asarray(static_rounds)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="supervit-deit-s")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--switches", type=int, default=600, help="switch trials per engine (at least 20)")
    ap.add_argument("--md", default=None)
    ap.add_argument("--kinds", default=None, help="comma-separated rows to run (default: all), e.g. "
                                                  "'openvino int8-branches,onnxruntime int8-dynamic-presets'")
    ap.add_argument("--calib", type=int, default=32, help="calibration images (random) for the calibrated INT8 rows")
    args = ap.parse_args()
    if args.switches < 20:
        ap.error("--switches: at least 20 (a p99 of fewer trials is one trial)")

    import torch

    from edgevit.backends.openvino import branches as openvino_branches
    from edgevit.backends.shared import SharedRunner, preset_feeds
    from edgevit.backends.onnxruntime.runner import OrtRunner
    from edgevit.backends.openvino.runner import OvRunner
    from edgevit.build.export import export_preset, export_shared
    from edgevit.host import cpu_info, tool_versions
    from edgevit.models import create_model
    from edgevit.backends.onnxruntime.quantize import quantize_onnxruntime_dynamic
    from edgevit.backends.onnxruntime import branches as ort_branches, presets as ort_presets
    from edgevit.backends.openvino.quantize import (compress_openvino_weights, convert_openvino_fp32,
                                                    quantize_graph, quantize_openvino)
    from edgevit.measure import measure_latencies_interleaved
    from edgevit.build.shared import INPUTS_FILE, binding, write_graph_sources, write_inputs, write_sources

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    presets = model.presets()
    size = model.img_size
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    calib = np.random.default_rng(2).standard_normal((args.calib, 3, size, size)).astype(np.float32)
    every = ("openvino fp32", "openvino fp32 dynamic", "openvino int8-weights", "openvino int8-branches",
             "openvino int8-graph", "onnxruntime fp32", "onnxruntime int8-dynamic",
             "onnxruntime int8-dynamic-presets",
             "onnxruntime int8-dynamic-branches")
    kinds = every if not args.kinds else tuple(k.strip() for k in args.kinds.split(","))
    if set(kinds) - set(every):
        ap.error(f"--kinds: unknown {sorted(set(kinds) - set(every))}; rows are {', '.join(every)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {k: [] for k in every}
        aux = {k: [] for k in files}       # files loaded beside the engine (.bin), for disk figures
        for p in presets:
            log(f"[export] {p.name}")
            onnx_path = tmp / f"{p.name}.onnx"
            export_preset(model, p, onnx_path, x, opset=17, batch=1)
            convert_openvino_fp32(onnx_path, tmp / f"{p.name}.xml")
            quantize_onnxruntime_dynamic(onnx_path, tmp / f"{p.name}.int8.onnx")
            compress_openvino_weights(onnx_path, tmp / f"{p.name}.w8.xml")
            files["openvino int8-weights"].append(tmp / f"{p.name}.w8.xml")
            aux["openvino int8-weights"].append(tmp / f"{p.name}.w8.bin")
            if {"openvino int8-branches", "openvino int8-graph"} & set(kinds):
                quantize_openvino(onnx_path, tmp / f"{p.name}.q8.xml", calib)   # the per-preset build's default
            for k in ("openvino int8-branches", "openvino int8-graph"):
                files[k].append(tmp / f"{p.name}.q8.xml")
                aux[k].append(tmp / f"{p.name}.q8.bin")
            files["onnxruntime fp32"].append(onnx_path)
            for k in ("openvino fp32", "openvino fp32 dynamic"):   # the same static engines for both rows
                files[k].append(tmp / f"{p.name}.xml")
                aux[k].append(tmp / f"{p.name}.bin")
            files["onnxruntime int8-dynamic"].append(tmp / f"{p.name}.int8.onnx")
            files["onnxruntime int8-dynamic-presets"].append(tmp / f"{p.name}.int8.onnx")
            files["onnxruntime int8-dynamic-branches"].append(tmp / f"{p.name}.int8.onnx")
        log("[export] shared")
        export_shared(model, tmp / "shared.onnx", x, opset=17, batch=1)
        convert_openvino_fp32(tmp / "shared.onnx", tmp / "shared.xml")
        quantize_onnxruntime_dynamic(tmp / "shared.onnx", tmp / "shared.int8.onnx")
        log("[export] branches")
        sources = write_sources({p.name: files["onnxruntime fp32"][i] for i, p in enumerate(presets)},
                                tmp / "sources.json")
        openvino_branches.build(sources, tmp / "branches.xml")
        openvino_branches.build(sources, tmp / "branches.w8.xml", weights="int8")
        if "openvino int8-branches" in kinds:
            openvino_branches.build(sources, tmp / "branches.q8.xml", weights="int8-static", unfuse=False,
                                    calib=calib)
        graphs, weights_file = ([], None) if "onnxruntime int8-dynamic-presets" not in kinds else \
            ort_presets.build(sources, tmp / "presets", "shared.p")[:2]
        preset_graphs = [tmp / "presets" / g for g in graphs] or [None]
        if "onnxruntime int8-dynamic-branches" in kinds:
            ort_branches.build(sources, tmp / "branches.ort.onnx")
        shared = {"openvino fp32": (tmp / "branches.xml", [tmp / "branches.bin"]),
                  "openvino int8-branches": (tmp / "branches.q8.xml", [tmp / "branches.q8.bin"]),
                  "onnxruntime int8-dynamic-presets": (preset_graphs[0], [tmp / "presets" / str(weights_file),
                                                                          *preset_graphs[1:]]),
                  "openvino fp32 dynamic": (tmp / "shared.xml", [tmp / "shared.bin"]),
                  "openvino int8-graph": (tmp / "graph.q8.xml", [tmp / "graph.q8.bin"]),
                  "openvino int8-weights": (tmp / "branches.w8.xml", [tmp / "branches.w8.bin"]),
                  "onnxruntime fp32": (tmp / "shared.onnx", []),
                  "onnxruntime int8-dynamic": (tmp / "shared.int8.onnx", []),
                  "onnxruntime int8-dynamic-branches": (tmp / "branches.ort.onnx", [])}
        # The shared bundle's inputs file and bindings, as `edgevit build --shared-weights` writes them.
        write_inputs(model, presets, tmp)
        if "openvino int8-graph" in kinds:    # the one graph, calibrated on every preset's inputs in turn
            quantize_graph(write_graph_sources(tmp / "shared.onnx", tmp, model, presets, tmp / "graph.json"),
                           tmp / "graph.q8.xml", calib)
        bindings = {p.name: binding(model, p, i) for i, p in enumerate(presets)}
        feeds = {p.name: preset_feeds(tmp, bindings[p.name]) for p in presets}
        inputs_mb = mb([tmp / INPUTS_FILE])

        static_f32 = {"inference_precision": "f32"}
        # What the build records for each shared engine: the branches engine runs without snippets
        # (edgevit.backends.openvino.OpenVINOBackend.compile).
        shared_settings = {"openvino fp32": {**static_f32, "snippets_mode": "DISABLE"},
                           "openvino int8-weights": {**static_f32, "snippets_mode": "DISABLE"},
                           "openvino int8-branches": {**static_f32, "snippets_mode": "DISABLE"},
                           "openvino fp32 dynamic": static_f32}
        session_config = ort_presets.SESSION_CONFIG
        rows, static_rss = [], {}
        for kind in kinds:
            backend = kind.split()[0]
            names = [p.name for p in presets]
            common = {"backend": backend, "shape": list(x.shape)}
            key = tuple(map(str, files[kind]))
            if key not in static_rss:     # the two OpenVINO rows share their static engines
                static_rss[key] = (
                    child_rss({**common, "shared": False, "files": [str(files[kind][-1])], "settings": static_f32}),
                    child_rss({**common, "shared": False, "files": list(key), "settings": static_f32}))
            one, all_ = static_rss[key]
            if kind == "onnxruntime int8-dynamic-presets":
                on = {**common, "shared": "presets", "session_config": session_config}
                s_one = child_rss({**on, "files": [str(preset_graphs[-1])]})
                s_all = child_rss({**on, "files": [str(g) for g in preset_graphs]})
            else:
                on_shared = {**common, "shared": True, "files": [str(shared[kind][0])], "bundle": str(tmp),
                             "settings": shared_settings.get(kind, static_f32)}
                s_one = child_rss({**on_shared, "bindings": [bindings[n] for n in names[-1:]]})
                s_all = child_rss({**on_shared, "bindings": [bindings[n] for n in names]})
            disk_one = mb([files[kind][-1], *aux[kind][-1:]])
            disk_all = mb(files[kind] + aux[kind])
            disk_shared = mb([shared[kind][0], *shared[kind][1]]) + inputs_mb
            rows.append((kind, one, all_, s_one, s_all, disk_one, disk_all, disk_shared))
            log(f"[memory] {kind}: static 1 {one:.0f} MB, 12 {all_:.0f} MB; shared 1 {s_one:.0f} MB, "
                f"12 {s_all:.0f} MB")

        lat_rows, switch_rows = [], []
        for kind in kinds:
            backend = kind.split()[0]
            make = (lambda f, s: OvRunner(f, s)) if backend == "openvino" else (lambda f, s: OrtRunner(f))
            static = {p.name: make(f, static_f32) for p, f in zip(presets, files[kind])}
            if kind == "onnxruntime int8-dynamic-presets":
                base = None
                shared_r = {p.name: OrtRunner(g, session_config=session_config) for p, g in zip(presets, preset_graphs)}
            else:
                base = make(shared[kind][0], shared_settings.get(kind, static_f32))
                shared_r = {p.name: SharedRunner(base, feeds[p.name], None) for p in presets}
            # A preset's static and shared runners side by side in each round, so both see the same host.
            runners = {f"{k}/{p.name}": (static if k == "static" else shared_r)[p.name]
                       for p in presets for k in ("static", "shared")}
            log(f"[latency] {kind}: {len(runners)} runners, interleaved")
            lat = measure_latencies_interleaved(runners, x, rounds=args.rounds)
            ratios = {p.name: _paired_ratio(lat[f"shared/{p.name}"]["rounds"], lat[f"static/{p.name}"]["rounds"])
                      for p in presets}
            lat_rows.append((kind, {p.name: (lat[f"static/{p.name}"]["p50"], lat[f"shared/{p.name}"]["p50"], ratios[p.name])
                                    for p in presets}))
            switch_rows.append((kind, *_switch_cost(shared_r, x, args.switches)))
            for r in [*static.values(), *([base] if base is not None else shared_r.values())]:
                r.close()

    cpu, v = cpu_info(), tool_versions()
    out = [f"# Shared-weight engines vs per-preset static engines: {args.model} (random weights), batch 1", "",
           f"host: {cpu['model']} ({', '.join(cpu['features'])}), {cpu['cores']} cores; onnxruntime "
           f"{v['onnxruntime']}, openvino {v['openvino']}", "",
           f"`python tools/bench_shared.py --model {args.model}"
           + (f" --kinds '{','.join(kinds)}'" if args.kinds else "") + "`", "",
           "| engine | PSS 1 preset static | PSS 12 static | PSS 1 shared | PSS 12 shared | 12 shared / 1 static "
           "| disk 1 static | disk 12 static | disk shared | shared / 1 static |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, one, all_, s_one, s_all, d1, d12, ds in rows:
        out.append(f"| {kind} | {one:.0f} MB | {all_:.0f} MB | {s_one:.0f} MB | {s_all:.0f} MB | **{s_all / one:.2f}x** | "
                   f"{d1:.1f} MB | {d12:.1f} MB | {ds:.1f} MB | **{ds / d1:.2f}x** |")
    out += ["", f"p50 latency per preset, ms (static / shared, and shared / static: the median over {args.rounds} "
            "rounds of each round's ratio, the two timed back to back in every round); interleaved in one process:", "",
            "| preset | " + " | ".join(k for k, _ in lat_rows) + " |", "|---|" + "---|" * len(lat_rows)]
    for p in presets:
        cells = [f"{d[p.name][0]:.2f} / {d[p.name][1]:.2f} ({d[p.name][2]:.2f}x)" for _, d in lat_rows]
        out.append(f"| {p.name} | " + " | ".join(cells) + " |")
    worst = {k: max(r for _, _, r in d.values()) for k, d in lat_rows}
    gmean = {k: float(np.exp(np.mean(np.log([r for _, _, r in d.values()])))) for k, d in lat_rows}
    out.append("| worst / geomean | " + " | ".join(f"{worst[k]:.2f}x / {gmean[k]:.2f}x" for k, _ in lat_rows) + " |")
    out += ["", "A switch (another preset's inputs on the same engine) followed by the first result: the first request "
            "after the switch minus the next request of the same preset, beside the same difference between two "
            "requests that follow no switch (the host's jitter, measured the same way), ms:", "",
            "| engine | switch p50 | switch p99 | no switch p50 | no switch p99 | switch p99 beyond no-switch p99 "
            "(95 % interval) | switches |", "|---|---|---|---|---|---|---|"]
    out += [f"| {k} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | **{e:.3f}** ({lo:.1f} to {hi:.1f}) | {n} |"
            for k, a, b, c, d, e, lo, hi, n in switch_rows]
    text = "\n".join(out) + "\n"
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
