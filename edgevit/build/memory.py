"""The build's memory stage: what each backend's engines hold with every preset resident, and the rule that
keeps a shared-weight engine from shipping as the default when it holds more than the engines it replaces.

Measured only where this host is the target (``plan.measure``), in fresh processes (``edgevit.build.resident``).
A shared-weight engine exists to hold the weights once; on some hosts a backend packs them again for every
preset's shape (OpenVINO bf16 branches on an AVX512-BF16 CPU: 12.6x one preset's engine), and then the
presets' own engines would cost less. The reference is one preset's own engine of the same backend and
precision, built from the largest preset's static graph (the most activations): a shared engine that holds
more than that times the preset count is not made the default, and the build says so in one line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgevit.build import resident
from edgevit.backends.base import EngineSpec
from edgevit.build.artifacts import Site, array_digest, compile_cached
from edgevit.errors import EdgevitError


def _chosen_specs(entries: list, backend: str) -> dict:
    return {e.name: EngineSpec(**e.engines[backend].engine) for e in entries
            if backend in e.engines and e.engines[backend].ok}


def record(plan, entries: list, bundle_dir: Path, known: dict | None = None) -> dict | None:
    """Per backend, the resident memory of its chosen engines with every preset loaded; written into each
    engine entry (``resident_mb``) and returned as the manifest's ``memory`` record. ``known``: sets
    measured already (backend -> ``Resident``)."""
    if not plan.measure:
        return None
    known, out = dict(known or {}), {}
    for b in plan.backends:
        specs = _chosen_specs(entries, b.name)
        if b.deferred_build or not specs:
            continue
        try:
            r = known.get(b.name) or resident.measure(bundle_dir, b.name, specs)
        except EdgevitError as e:
            plan.opts.log(f"[memory] {b.name}: not measured: {e}")
            continue
        shared = any(e.engines[b.name].extra.get("shared", False) for e in entries if e.name in specs)
        for e in entries:
            if e.name in r.added_mb:
                e.engines[b.name].resident_mb = {"added": round(r.added_mb[e.name], 1),
                                                 "all_presets": round(r.total_mb, 1)}
        out[b.name] = {"all_presets_mb": round(r.total_mb, 1), "presets": len(specs), "shared_weights": shared}
    if not out:
        return None
    plan.opts.log("[memory] every preset resident, " + "; ".join(
        f"{b} {v['all_presets_mb']:.1f} MB for {v['presets']} presets{' (shared weights)' if v['shared_weights'] else ''}"
        for b, v in out.items()) + " (fresh process each)")
    return {"how": resident.HOW, "backends": out}


def _reference_candidate(backend, profile, shared_cand: dict):
    """The backend's per-preset candidate that matches the shared engine's: the same id, else the same
    precision, else the floor."""
    cands = [c for c in backend.candidates(profile) if not c.skip and not c.escalates]
    return (next((c for c in cands if c.id == shared_cand["id"]), None)
            or next((c for c in cands if c.precision == shared_cand["precision"]), None)
            or next(c for c in cands if c.floor))


def shared_check(plan, shared: dict, bundle_dir: Path, reference_onnx: Path, cache,
                 known: dict | None = None) -> tuple[dict, dict]:
    """Each backend's shared engine with every preset resident against ``len(presets)`` x one preset's own
    engine (``reference_onnx``: the largest preset's static graph). Returns (backend -> ``Resident`` of the
    shared set, backend -> the check's record, with ``passed``). ``known``: shared sets measured already
    (the budget's choice, backend -> ``Resident``)."""
    known = known or {}
    presets, log = plan.presets, plan.opts.log
    largest = max(presets, key=lambda p: p.flops)
    measured, checks = {}, {}
    for b in plan.backends:
        if b.deferred_build:
            log(f"[memory] {b.name} shared engine: built and measured on the device (one engine, an optimisation "
                f"profile per preset)")
            continue
        cand = _reference_candidate(b, plan.profile, shared[largest.name][b.name].chosen)
        specs = {p.name: EngineSpec(**shared[p.name][b.name].engine) for p in presets}
        try:
            with tempfile.TemporaryDirectory(prefix="edgevit-reference-") as scratch:
                site = Site(b, plan.profile, cache, Path(scratch), plan.cx, array_digest(plan.cx))
                spec, _ = compile_cached(site, reference_onnx, largest.name, cand)
                one = resident.measure(Path(scratch), b.name, {largest.name: spec}).total_mb
            measured[b.name] = got = known.get(b.name) or resident.measure(bundle_dir, b.name, specs)
        except EdgevitError as e:
            log(f"[memory] {b.name} shared engine: not checked against the presets' own engines: {e}")
            continue
        limit = one * len(presets)
        shared_id = shared[largest.name][b.name].chosen["id"]
        checks[b.name] = {"shared_engine": shared_id, "shared_mb": round(got.total_mb, 1),
                          "per_preset_engine": f"{cand.id} at {largest.name}", "per_preset_mb": round(one, 1),
                          "presets": len(presets), "passed": got.total_mb <= limit}
        ratio = got.total_mb / one if one > 0 else float("inf")
        verdict = ("holds less than the presets' own engines" if checks[b.name]["passed"] else
                   "holds more than the presets' own engines would: not the default")
        log(f"[memory] {b.name} shared {shared_id}: {got.total_mb:.0f} MB with all {len(presets)} presets resident, "
            f"{ratio:.1f}x one preset's own {cand.id} engine ({one:.0f} MB at {largest.name}); {verdict}")
    return measured, checks
