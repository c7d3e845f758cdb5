"""``edgevit bench``: measure every preset on every backend of a bundle, beside torch eager, in one run.

Hygiene: a fixed thread count for every engine; a warm-up per engine; engines measured round-robin within
each repeat (torch, backend A, backend B, next preset, ...) so drift hits all of them alike, with a short
idle pause between engines so one runtime's spinning threads do not slow the next; medians; and a warning
when the repeats' medians differ by more than 10 %.

Throughput at batch B: the torch baseline runs a true batch of B; bundle engines have static shapes, so B
requests are kept in flight on B threads (what a serving loop does with a batch-1 engine).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgevit.version import __version__
from edgevit.backends.base import get_backend
from edgevit.runtime.runtime import checked_spec
from edgevit.runtime.sensors import find_sensor, jetson_power_mode, power_mode_ids, set_power_mode
from edgevit.bench.peak import fp32_peak, int8_peak
from edgevit.bench.stats import summarize
from edgevit.bundle import read_manifest, verify_files
from edgevit.build.reference import REFERENCE, TorchRunner
from edgevit.manifest import Manifest, PresetEntry
from edgevit.measure import concurrent, resident_mb, timed
from edgevit.errors import EdgevitError
from edgevit.host import cpu_info, tool_versions

SCHEMA = "edgevit-bench"
SCHEMA_VERSION = 1


@dataclass
class BenchOptions:
    bundle: str
    presets: list[str] | None = None
    backends: list[str] | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    threads: int | None = None
    warmup_s: float = 0.3
    # Idle pause before each timed block: the previous engine's thread pool keeps spinning for a while after
    # its last inference, and on a 2-core host that doubled the next engine's latency for a whole block.
    settle_s: float = 0.2
    duration_s: float | None = 1.5       # per engine and batch size, over all repeats
    iterations: int | None = None        # instead of duration: inferences per engine, over all repeats
    repeats: int = 3
    # Idle before each timed request (None: the bundle's runtime.request_interval_ms, as the build timed it).
    interval_ms: float | None = None
    accuracy: bool = False
    baseline: bool = True
    power_modes: list[str] | None = None
    sysfs: str = "/sys"
    log: Callable[[str], None] = field(default=lambda m: None)


@dataclass
class Engine:
    preset: PresetEntry
    backend: str                 # REFERENCE ("torch") for the baseline
    precision: str
    infer: Callable
    batch: int                   # the engine's static batch (torch: any)
    size_mb: float | None
    rss_mb: float | None
    inference_precision: str | None = None
    runner: object = None




def _files_mb(bundle: Path, files: list[str]) -> float:
    return sum((bundle / f).stat().st_size for f in files) / 2 ** 20


def load_engines(bundle: Path, manifest: Manifest, opts: BenchOptions, threads: int) -> tuple[list[Engine], dict]:
    """Bundle engines (and torch presets) for the chosen presets and backends; skipped ones with reasons."""
    chosen = manifest.presets
    if opts.presets:
        known = {p.name for p in chosen}
        bad = [n for n in opts.presets if n not in known]
        if bad:
            raise EdgevitError(f"unknown preset(s) {', '.join(bad)}; this bundle has: {', '.join(sorted(known))}")
        chosen = [p for p in chosen if p.name in opts.presets]
    backends = opts.backends or list(manifest.backends)
    for b in backends:
        if b not in manifest.backends and b not in manifest.unavailable_backends:
            raise EdgevitError(f"backend {b!r} is not in this bundle; it has: {', '.join(manifest.backends)}")
    engines, skipped, resident, verified = [], {}, {}, set()
    for b in backends:            # backend by backend, so each one's resident memory with all presets is clear
        rss_before, loaded = resident_mb(), 0
        for p in chosen:
            entry = p.engines.get(b)
            if entry is None or not entry.ok:
                skipped[f"{p.name}/{b}"] = "missing" if entry is None else entry.reason or entry.status
                continue
            spec = checked_spec(bundle, manifest, p.name, b, entry, get_backend(b), verified)
            spec.settings = {**spec.settings, "threads": threads}
            before = resident_mb()
            runner = get_backend(b).load(bundle, spec)
            engines.append(Engine(p, b, spec.precision, runner.infer, runner.input_shape[0],
                                  _files_mb(bundle, spec.files), resident_mb() - before,
                                  getattr(runner, "inference_precision", None), runner))
            loaded += 1
        if loaded:
            resident[b] = {"presets": loaded, "mb": round(resident_mb() - rss_before, 1),
                           "shared_weights": any(b in p.engines and p.engines[b].extra.get("shared") for p in chosen)}
    baseline_note = None
    if opts.baseline:
        engines_torch, baseline_note = _torch_engines(bundle, manifest, chosen, threads)
        engines = engines_torch + engines
    else:
        baseline_note = "skipped (--no-baseline)"
    return engines, {"skipped": skipped, "baseline": baseline_note, "resident": resident}


def _torch_engines(bundle: Path, manifest: Manifest, presets: list[PresetEntry], threads: int):
    if not manifest.checkpoint:
        return [], "skipped: the bundle has no checkpoint (built with --no-checkpoint)"
    try:
        import torch
    except ImportError:
        return [], "skipped: torch is not installed on this host"
    from edgevit.build.checkpoints import PickleRefused, load_checkpoint

    # The baseline must be the model the engines were built from: a replaced model.pt would compare
    # the engines with another network (and report its accuracy) without a word.
    verify_files(bundle, manifest, [manifest.checkpoint])
    torch.set_num_threads(threads)
    before = resident_mb()
    try:
        model = load_checkpoint(bundle / manifest.checkpoint).model.eval()
    except PickleRefused:
        # bench has no --trust-checkpoint: a bundle is not a place to run pickled code from
        raise EdgevitError(f"bundle {bundle}: its checkpoint {manifest.checkpoint} needs full pickle loading, "
                           f"which bench never does (it can run arbitrary code); measure without the torch "
                           f"baseline (--no-baseline), or rebuild the bundle, whose checkpoint edgevit writes "
                           f"as plain tensors") from None
    rss = resident_mb() - before
    size = _files_mb(bundle, [manifest.checkpoint])
    out = []
    for p in presets:
        runner = TorchRunner(model, p.resolution, p.keep_rate, batch=64)
        out.append(Engine(p, REFERENCE, "fp32", runner.infer, 0, size, rss, runner=runner))
    return out, "torch eager FP32 from the bundle's checkpoint, measured interleaved with the engines"


@dataclass
class _Tally:
    """What one engine accumulates over the repeats."""

    timings: list = field(default_factory=list)      # per repeat, ms per call at batch 1
    joules: float = 0.0
    calls: int = 0                                    # calls the energy covers
    throughput: dict = field(default_factory=dict)   # batch -> [images or calls, seconds]


def measure(engines: list[Engine], opts: BenchOptions, sensor, input_shape) -> list[dict]:
    """Every engine timed round-robin, ``opts.repeats`` times, after one warm-up each."""
    rng = np.random.default_rng(0)
    share = None if opts.duration_s is None else opts.duration_s / opts.repeats
    iters = None if opts.iterations is None else max(1, opts.iterations // opts.repeats)
    tallies = {id(e): _Tally() for e in engines}
    inputs = {}

    def x_for(e: Engine, batch: int):
        b = e.batch or batch          # an eager reference takes any batch
        if b not in inputs:
            inputs[b] = rng.standard_normal((b, *input_shape[1:])).astype(np.float32)
        return inputs[b]

    for e in engines:  # warm-up, once per engine
        timed(e.infer, x_for(e, 1), opts.warmup_s, None if opts.warmup_s else 3)
    for r in range(opts.repeats):
        for e in engines:
            _one_turn(e, tallies[id(e)], x_for, opts, sensor, share, iters)
        opts.log(f"[bench] repeat {r + 1}/{opts.repeats} done")
    return [_result(e, tallies[id(e)], sensor) for e in engines]


def _one_turn(e: Engine, tally: _Tally, x_for, opts: BenchOptions, sensor, share, iters) -> None:
    """One engine's turn in one repeat: batch-1 latency (and energy), then throughput at each batch."""
    x = x_for(e, 1)
    time.sleep(opts.settle_s)
    timed(e.infer, x, None, 2)  # wake this engine's pool before the clock starts
    if sensor is not None:
        sensor.start()
    t = timed(e.infer, x, share, iters, interval_s=(opts.interval_ms or 0) / 1e3)
    if sensor is not None:
        tally.joules += sensor.stop()
        tally.calls += len(t)
    tally.timings.append(t)
    for b in opts.batches:
        if b == 1:
            continue
        if not e.batch:   # eager: one call of b images
            tb = timed(e.infer, x_for(e, b), share, iters)
            done, secs = b * len(tb), sum(tb) / 1e3
        else:             # a static-batch engine: b requests in flight
            done, secs = concurrent(e.infer, x, b, share or 0.5)
        acc = tally.throughput.setdefault(b, [0, 0.0])
        acc[0] += done
        acc[1] += secs


def _result(e: Engine, tally: _Tally, sensor) -> dict:
    stats = summarize(tally.timings)
    per_call = e.batch or 1          # images per call: the engine's static batch (torch at batch 1: 1)
    pooled = sum(len(t) for t in tally.timings)
    tput = {"1": round(per_call * pooled / (sum(sum(t) for t in tally.timings) / 1e3), 3)}
    for b, (done, secs) in tally.throughput.items():
        images = done if not e.batch else done * per_call
        tput[str(b)] = round(images / secs, 3) if secs else None
    n = tally.calls * per_call
    return {
        "preset": e.preset.name, "resolution": e.preset.resolution, "keep_rate": e.preset.keep_rate,
        "gflops": e.preset.gflops, "backend": e.backend, "precision": e.precision,
        "engine_batch": per_call,
        "inference_precision": e.inference_precision,
        "latency_ms": stats.to_dict(), "throughput_ips": tput,
        "engine_mb": None if e.size_mb is None else round(e.size_mb, 3),
        "rss_delta_mb": None if e.rss_mb is None else round(e.rss_mb, 2),
        "energy_mj": round(1e3 * tally.joules / n, 4) if sensor is not None and n else None,
        "warning": stats.warning,
    }


def attach_accuracy(results: list[dict], manifest: Manifest, engines: list[Engine], remeasure: bool, log) -> None:
    by_key = {(e.preset.name, e.backend): e for e in engines}
    data = None
    if remeasure:
        from edgevit.data.datasets import available_here, load_dataset
        from edgevit.data.preprocess import preprocess_from_dict
        from edgevit.backends.base import run_engine

        name = manifest.data["name"]
        if not available_here(name):
            raise EdgevitError(f"--accuracy needs the bundle's validation data {name}, which is not on this host")
        pre = preprocess_from_dict(manifest.preprocess)
        ds = load_dataset(name, crop=pre.crop, channels=pre.channels, kind=getattr(pre, "kind", "images"))
        data = ds.val.arrays(pre)
        log(f"[bench] re-measuring top-1 on {len(data[1])} validation images")
    for r in results:
        preset = manifest.preset(r["preset"])
        if data is not None:
            logits = run_engine(by_key[(r["preset"], r["backend"])].runner, data[0])
            r["top1"], r["top1_source"] = float((logits.argmax(-1) == data[1]).mean()), "measured"
        elif r["backend"] == REFERENCE:
            r["top1"], r["top1_source"] = preset.torch["top1"], "manifest"
        else:
            r["top1"], r["top1_source"] = preset.engines[r["backend"]].top1, "manifest"


def attach_ratios(results: list[dict], peaks: dict) -> None:
    """Speed-up over torch (per image) and achieved GFLOP/s; latency is per call of ``engine_batch`` images."""
    base = {r["preset"]: r["latency_ms"]["p50"] for r in results if r["backend"] == REFERENCE}
    for r in results:
        p50 = r["latency_ms"]["p50"]
        per_image = p50 / r.get("engine_batch", 1) if p50 else None
        r["speedup_vs_torch"] = round(base[r["preset"]] / per_image, 3) if r["preset"] in base and per_image else None
        achieved = r["gflops"] / (per_image / 1e3) if per_image else None
        peak = peaks.get("int8_gflops") if r["precision"] == "int8" else peaks.get("fp32_gflops")
        r["achieved_gflops"] = None if achieved is None else round(achieved, 3)
        r["fraction_of_peak"] = round(achieved / peak, 5) if achieved and peak else None


# -- the whole run ------------------------------------------------------------------------------------------

def _peaks(threads: int, log) -> dict:
    log("[bench] host peak: one 1024^3 matmul, FP32 and INT8")
    i8 = int8_peak(threads=threads)
    return {"fp32_gflops": round(fp32_peak(threads=threads), 2), "int8_gflops": None if i8 is None else round(i8, 2)}


def _over_power_modes(opts: BenchOptions, one_run) -> list[dict]:
    """``one_run()`` in each of ``--power-modes`` (Jetson, root), the original mode restored; else once."""
    if not opts.power_modes:
        return [{**r, "power_mode": None} for r in one_run()]
    original = jetson_power_mode()
    if original is None:
        raise EdgevitError("--power-modes needs a Jetson with nvpmodel on PATH")
    if os.geteuid() != 0:
        raise EdgevitError("--power-modes needs root (nvpmodel changes the device's power mode)")
    ids, runs = power_mode_ids(), []
    try:
        for mode in opts.power_modes:
            opts.log(f"[bench] power mode {mode}")
            set_power_mode(mode, ids)
            runs += [{**r, "power_mode": mode} for r in one_run()]
    finally:
        set_power_mode(original, ids)
    return runs


def run_bench(opts: BenchOptions) -> dict:
    bundle = Path(opts.bundle)
    manifest = read_manifest(bundle)
    threads = opts.threads or os.cpu_count() or 1
    if opts.repeats < 1:
        raise EdgevitError("--repeats must be at least 1")
    if opts.interval_ms is None:
        opts.interval_ms = manifest.request_interval_s * 1e3
    engines, notes = load_engines(bundle, manifest, opts, threads)
    if not engines:
        raise EdgevitError(f"nothing to measure in {bundle}: {notes['skipped']}")
    sensor, energy_note = find_sensor(opts.sysfs)
    peaks = _peaks(threads, opts.log)
    opts.log(f"[bench] {len(engines)} engines x {opts.repeats} repeats, interleaved, {threads} threads")

    def one_run() -> list[dict]:
        results = measure(engines, opts, sensor, manifest.input["shape"])
        attach_accuracy(results, manifest, engines, opts.accuracy, opts.log)
        attach_ratios(results, peaks)
        return results

    try:
        runs = _over_power_modes(opts, one_run)
    finally:
        for e in engines:
            if e.runner is not None:
                e.runner.close()
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgevit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"path": str(bundle), "name": manifest.name, "model": manifest.model["name"],
                   "target": manifest.target["name"]},
        "host": _host(threads, engines),
        "settings": {"batches": list(opts.batches), "warmup_s": opts.warmup_s, "settle_s": opts.settle_s,
                     "duration_s": opts.duration_s,
                     "iterations": opts.iterations, "repeats": opts.repeats, "accuracy": opts.accuracy,
                     "interval_ms": opts.interval_ms},
        "peak": peaks,
        "energy": {"sensor": None if sensor is None else sensor.name, "note": energy_note or None},
        "baseline": notes["baseline"],
        "skipped": notes["skipped"],
        "resident_mb": notes["resident"],
        "results": runs,
    }


def _host(threads: int, engines: list[Engine]) -> dict:
    import resource

    cpu = cpu_info()
    return {"cpu": cpu["model"], "arch": platform.machine(), "features": cpu["features"],
            "cores": cpu["cores"], "threads": threads, "tools": tool_versions(),
            "openvino_inference_precision": sorted({e.inference_precision for e in engines if e.inference_precision}),
            "jetson_power_mode": jetson_power_mode(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
