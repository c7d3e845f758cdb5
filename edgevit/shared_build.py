"""Shared-weight bundles (``edgevit build --shared-weights``): every SuperViT preset served by one engine per
backend, so all presets are resident for about the memory of one.

The presets' static engines each hold a copy of the same weights (12 presets: 10.6x one preset's memory).
Here each backend loads one engine once (``edgevit.backends.base.shared_runner``) and a preset is a small set
of inputs to it. Two kinds of engine, one binding:

* one graph for every preset (``SharedPresets``: the resolution, the position table and the three kept-token
  counts are inputs, so shapes inside are dynamic): ONNX Runtime, and OpenVINO with
  ``openvino.shared_graph: dynamic``. A preset is its arrays in ``engines/shared-inputs.npz`` (a position
  table per resolution) and the inputs given by their length alone, as integers in its binding;
* a branch per preset (``backends.openvino_branches``, OpenVINO's default): every preset's static graph in
  one IR behind ``If`` nodes, the weights stored and packed once. A preset is its branch index. These
  candidates (``source="presets"``) compile from the presets' static exports, listed by ``write_sources``.

``binding`` records every form (``preset_feeds`` turns it into feeds; an engine takes the inputs it has).
Stages as in the per-preset build: export, candidates per backend (FP32, weight-only INT8; calibrated INT8 is
fitted to one preset's activations and is not a candidate), every candidate validated and gated at every
preset (a candidate passes only if it passes at all of them), one interleaved latency pass, then one choice
per backend for all presets by the geometric mean over presets, with the selection's noise rule.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from edgevit.backends.base import EngineSpec
from edgevit.errors import EdgevitError
from edgevit.selection import choose_backend, choose_candidate
from edgevit import engine_cache
from edgevit.engine_cache import compile_cached, remove_unchosen
from edgevit.measure import measure_into_records
from edgevit.validate import gate, validate

ONNX_FILE = "onnx/shared.onnx"
INPUTS_FILE = "engines/shared-inputs.npz"


def _split(model, preset) -> tuple[dict, dict]:
    """A preset's inputs on the shared graph as (arrays, lengths): the inputs its family marks as carried by
    their length alone are stored as integers, the rest as arrays."""
    from edgevit.models import family_of

    graph = family_of(model).shared_presets
    feeds = graph.preset_inputs(model, preset.resolution, preset.keep_rate)
    lengths = {k: int(feeds[k].shape[0]) for k in graph.LENGTHS}
    return {k: v for k, v in feeds.items() if k not in lengths}, lengths


def binding(model, preset, branch: int | None = None) -> dict:
    """What selects ``preset`` on the shared engine (recorded in each preset's engine settings): its arrays'
    group in the inputs file, the inputs given by their length, and its branch (its index among the built
    presets: engines with a branch per preset). ``backends.base.preset_feeds`` turns it back into feeds
    without knowing the model."""
    _, lengths = _split(model, preset)
    out = {"inputs": INPUTS_FILE, "arrays": f"r{preset.resolution}", "lengths": lengths,
           "resolution": preset.resolution}
    if branch is not None:
        out["branch"] = branch
    return out


def write_sources(preset_onnx: dict, path: Path) -> Path:
    """The file a ``source="presets"`` candidate compiles from: every preset's static ONNX, in branch order,
    with its digest (the file's own digest is the engine cache key, so it must change when a graph does)."""
    from edgevit.bundle import sha256_file

    path.write_text(json.dumps({"presets": [{"name": n, "onnx": str(p), "sha256": sha256_file(p)}
                                            for n, p in preset_onnx.items()]}, indent=1))
    return path


def needs_preset_graphs(backends, profile) -> bool:
    return any(c.source == "presets" and not c.skip for b in backends for c in b.candidates(profile, shared=True))


def write_inputs(model, presets, bundle_dir: Path) -> None:
    """The presets' arrays, once per group: every preset of one resolution shares its position table."""
    arrays: dict[str, np.ndarray] = {}
    for p in presets:
        group = binding(model, p)["arrays"]
        for name, value in _split(model, p)[0].items():
            key = f"{group}/{name}"
            if key in arrays and not np.array_equal(arrays[key], value):
                raise EdgevitError(f"{model.variant}: preset {p.name} gives input {name!r} another value than the "
                                   f"other presets of group {group}; the shared inputs file cannot hold both")
            arrays[key] = value
    path = bundle_dir / INPUTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def export_cached(model, weights: str, sample, profile, cache) -> tuple[Path, dict, bool]:
    from edgevit.export import export_shared
    from edgevit.models import family_of

    # The graph's inputs are its contract with the bundle: an export cached under another contract is stale.
    contract = getattr(family_of(model).shared_presets, "INPUTS", None)
    return engine_cache.export_cached(
        "export-shared", (weights, model.variant, model.config, profile.opset, profile.batch, contract), cache,
        lambda path: export_shared(model, path, sample, opset=profile.opset, batch=profile.batch))


def _geomean(values) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def _aggregate(records: list[dict]) -> dict | None:
    """One latency record for a candidate over all presets: geometric means of the p50s and of each round."""
    lats = [r["latency_ms"] for r in records if r.get("latency_ms")]
    if len(lats) != len(records) or not lats:
        return None
    rounds = list(zip(*(lat["rounds"] for lat in lats)))
    return {"p50": _geomean(lat["p50"] for lat in lats), "rounds": [_geomean(r) for r in rounds],
            "over": f"geometric mean over {len(lats)} presets"}


class _Candidate:
    def __init__(self, cand, spec: EngineSpec, seconds: float, cached: bool):
        self.cand, self.spec, self.seconds, self.cached = cand, spec, seconds, cached
        self.per_preset: dict[str, dict] = {}

    @property
    def passed(self) -> bool:
        return self.cand.floor or all(r["gate"]["passed"] for r in self.per_preset.values())


def _preset_spec(spec: EngineSpec, model, presets, preset) -> EngineSpec:
    shared = binding(model, preset, presets.index(preset))
    return EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings, "shared": shared}})


def build_shared(model, presets, backends, profile, cx, vx, vy, refs: dict, onnx_path: Path, cache, bundle_dir: Path,
                 measure: bool, calib_digest, log, sources: Path | None = None) -> dict[str, dict]:
    """Engines entries ``{preset: {backend: entry}}`` and each preset's ``default``, for a shared bundle.
    ``sources`` (``write_sources``) is what candidates with ``source="presets"`` compile from."""
    out: dict[str, dict] = {p.name: {} for p in presets}
    work: dict[str, list[_Candidate]] = {}
    for b in backends:
        work[b.name], skipped = [], []
        for cand in b.candidates(profile, shared=True):
            if cand.skip:
                skipped.append({**cand.record(), "passed": False, "skipped": True, "reason": cand.skip,
                                "latency_ms": None})
                continue
            src = sources if cand.source == "presets" else onnx_path
            if src is None:
                raise EdgevitError(f"{b.name} {cand.id}: builds from every preset's static graph, and none was "
                                   f"exported (shared_build.write_sources)")
            c = _build_and_gate(b, cand, model, presets, profile, cx, vx, vy, refs, src, cache, bundle_dir,
                                calib_digest, log)
            if c.passed:
                work[b.name].append(c)
            else:
                for rel in c.spec.files:
                    (bundle_dir / rel).unlink(missing_ok=True)
        work[b.name + "/skipped"] = skipped

    if measure:
        _measure(model, presets, backends, work, bundle_dir, vx, log)
    chosen: dict[str, _Candidate] = {}
    for b in backends:
        cands = work[b.name]
        aggs = [{**c.cand.record(), "passed": c.passed, "latency_ms": _aggregate(list(c.per_preset.values()))}
                for c in cands]
        pick, why = choose_candidate(aggs, measure)
        chosen[b.name] = cands[aggs.index(pick)]
        remove_unchosen([c.spec for c in cands], chosen[b.name].spec, bundle_dir)
        for p in presets:
            records = [c.per_preset[p.name] for c in cands] + work[b.name + "/skipped"]
            out[p.name][b.name] = _entry(chosen[b.name], records, model, presets, p, profile, why, measure)
    set_default(out, presets, [b.name for b in backends], measure)
    return out


def set_default(out: dict, presets, order: list[str], measure: bool, excluded: dict | None = None) -> None:
    """One default backend for every preset (two shared engines resident would double the memory): the
    fastest by the geometric mean over presets, among the backends not ``excluded`` (name -> why)."""
    excluded = excluded or {}
    totals = {b: {"status": "ok", "latency_ms": _aggregate([out[p.name][b] for p in presets])}
              for b in order if b not in excluded}
    default, why = choose_backend(totals, [b for b in order if b not in excluded], measure)
    note = "".join(f"; not {b}: {reason}" for b, reason in excluded.items())
    for p in presets:
        out[p.name]["default"] = {"backend": default, "why": f"for every preset (shared weights): {why}{note}"}


def _build_and_gate(b, cand, model, presets, profile, cx, vx, vy, refs, onnx_path, cache, bundle_dir,
                    calib_digest, log) -> _Candidate:
    """One candidate compiled (or taken from the cache) and gated at every preset: it passes only if every
    preset passes, since one engine serves them all."""
    t0 = time.perf_counter()
    spec, cached = compile_cached(b, onnx_path, "shared", cand, cx, calib_digest, profile, cache, bundle_dir)
    c = _Candidate(cand, spec, 0.0, cached)
    runners = {p.name: b.load(bundle_dir, _preset_spec(spec, model, presets, p)) for p in presets}
    try:
        for p in presets:
            v = validate(runners[p.name], vx, vy, refs[p.name])
            g = gate(v, float((refs[p.name].argmax(-1) == vy).mean()), profile.accuracy)
            c.per_preset[p.name] = {**cand.record(), "gate": g.to_dict(), "reason": g.reason,
                                    "latency_ms": None, **v.to_dict()}
    finally:
        for r in runners.values():
            r.close()
    c.seconds = round(time.perf_counter() - t0, 2)
    failing = [n for n, r in c.per_preset.items() if not r["gate"]["passed"]]
    for r in c.per_preset.values():
        r["passed"] = c.passed
        if failing and not cand.floor:
            r["reason"] = r["reason"] or f"fails the gate at {', '.join(failing)}"
    log(f"[shared] {b.name} {cand.id}: " + ("passes at every preset" if not failing else
                                             f"fails the gate at {', '.join(failing)}")
        + f" ({c.seconds:.1f} s{', cached' if cached else ''})")
    return c


def _measure(model, presets, backends, work, bundle_dir: Path, vx, log) -> None:
    loads = {f"{p.name}/{b.name}/{c.cand.id}": (
        lambda b=b, s=_preset_spec(c.spec, model, presets, p): b.load(bundle_dir, s), c.per_preset[p.name])
             for b in backends for c in work[b.name] for p in presets}
    t0 = time.perf_counter()
    n = measure_into_records(loads, vx)
    log(f"[latency] {n} preset x candidate runners on shared engines measured interleaved "
        f"({time.perf_counter() - t0:.1f} s)")


def _entry(c: _Candidate, records: list[dict], model, presets, preset, profile, why: str,
           measured: bool) -> dict:
    mine = c.per_preset[preset.name]
    spec = _preset_spec(c.spec, model, presets, preset)
    figures = {k: mine[k] for k in ("top1", "agreement", "mean_abs_dlogit", "max_abs_dlogit", "samples",
                                    "predictions_sha256", "kappa", "discordant", "gate", "latency_ms")}
    entry = {"status": "ok", "engine": spec.to_dict(), "precision": c.cand.precision, "recipe": c.cand.recipe,
             "shared": True, **figures,
             "chosen": {"id": c.cand.id, "precision": c.cand.precision, "recipe": c.cand.recipe, "why": why},
             "candidates": records, "fallback": None}
    if not measured:
        entry["latency_note"] = "not measured here"
    if c.cand.precision != profile.preferred:
        entry["fallback"] = {"from": profile.preferred, "to": c.cand.precision, "reason": why}
    return entry


def copy_into(onnx_src: Path, bundle_dir: Path) -> None:
    dst = bundle_dir / ONNX_FILE
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_src, dst)
