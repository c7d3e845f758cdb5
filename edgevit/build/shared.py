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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.backends.base import EngineSpec
from edgevit.errors import EdgevitError
from edgevit.manifest import EngineEntry
from edgevit.build.budget import within_budget
from edgevit.build.selection import choose_backend
from edgevit.build import artifacts as engine_cache
from edgevit.build.artifacts import Site, compile_cached
from edgevit.build.pipeline import (CandidateResult, Checks, Choice, Job, choose, discard_failed, entry_for,
                                    measure_results, over_presets, remove_unchosen, run_candidate)

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


def read_sources(sources_json) -> list[tuple[str, Path]]:
    """(preset, static ONNX) in branch order from a ``write_sources`` file, each graph checked against its
    digest: the file's own digest keys the engine cache, so a graph changed or gone since would build another."""
    from edgevit.bundle import sha256_file

    out = []
    for item in json.loads(Path(sources_json).read_text())["presets"]:
        onnx_path = Path(item["onnx"])
        if not onnx_path.is_file() or sha256_file(onnx_path) != item["sha256"]:
            raise EdgevitError(f"{sources_json}: preset {item['name']}: {onnx_path} is "
                               f"{'changed since it was listed' if onnx_path.is_file() else 'missing'}; "
                               f"build again (or remove the build's --cache-dir)")
        out.append((item["name"], onnx_path))
    return out


GRAPH_SOURCE = "graph-presets"   # a candidate's source: the one graph, with every preset's inputs to calibrate on


def write_graph_sources(onnx_path: Path, bundle_dir: Path, model, presets, path: Path) -> Path:
    """The file a ``source="graph-presets"`` candidate compiles from: the one graph for every preset and each
    preset's binding (its inputs, in ``bundle_dir``'s shared-inputs file), so a calibrated engine of the one
    graph sees every preset's activations, not one preset's. The digests of the graph and of the inputs file
    are in it: the file's own digest keys the engine cache."""
    from edgevit.bundle import sha256_file

    path.write_text(json.dumps({"onnx": str(onnx_path), "sha256": sha256_file(onnx_path), "bundle": str(bundle_dir),
                                "inputs_sha256": sha256_file(Path(bundle_dir) / INPUTS_FILE),
                                "presets": [{"name": p.name, "binding": binding(model, p)} for p in presets]},
                               indent=1))
    return path


def read_graph_sources(sources_json) -> tuple[Path, list[tuple[str, dict]]]:
    """(the one graph, [(preset, its feeds but the image)]) from a ``write_graph_sources`` file, the graph and
    the inputs file checked against their digests."""
    from edgevit.backends.shared import preset_feeds
    from edgevit.bundle import sha256_file

    item = json.loads(Path(sources_json).read_text())
    onnx_path, inputs = Path(item["onnx"]), Path(item["bundle"]) / INPUTS_FILE
    for path, digest in ((onnx_path, item["sha256"]), (inputs, item["inputs_sha256"])):
        if not path.is_file() or sha256_file(path) != digest:
            raise EdgevitError(f"{sources_json}: {path} is {'changed since it was listed' if path.is_file() else 'missing'}"
                               f"; build again (or remove the build's --cache-dir)")
    return onnx_path, [(p["name"], preset_feeds(item["bundle"], p["binding"])) for p in item["presets"]]


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
    from edgevit.build.export import export_shared
    from edgevit.models import family_of

    # The graph's inputs are its contract with the bundle: an export cached under another contract is stale.
    contract = getattr(family_of(model).shared_presets, "INPUTS", None)
    return engine_cache.export_cached(
        "export-shared", (weights, model.variant, model.config, profile.opset, profile.batch, contract), cache,
        lambda path: export_shared(model, path, sample, opset=profile.opset, batch=profile.batch))


@dataclass(frozen=True)
class SharedGraph:
    """What a shared-weight build compiles: the model and its presets, the one graph for every preset, and
    ``sources`` (``write_sources``): what candidates with ``source="presets"`` compile from; ``graph_sources``
    (``write_graph_sources``): what candidates with ``source="graph-presets"`` compile from."""

    model: object
    presets: list
    onnx: Path
    sources: Path | None = None
    graph_sources: Path | None = None

    def spec_for(self, spec: EngineSpec, name: str) -> EngineSpec:
        """``spec`` selecting the preset ``name``: its binding in the settings."""
        i = [p.name for p in self.presets].index(name)
        shared = binding(self.model, self.presets[i], i)
        return EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings, "shared": shared}})

    def source(self, backend_name: str, cand) -> Path:
        if cand.source == GRAPH_SOURCE:
            if self.graph_sources is None:
                raise EdgevitError(f"{backend_name} {cand.id}: calibrates the one graph on every preset's inputs, "
                                   f"and none were listed (shared_build.write_graph_sources)")
            return self.graph_sources
        if cand.source != "presets":
            return self.onnx
        if self.sources is None:
            raise EdgevitError(f"{backend_name} {cand.id}: builds from every preset's static graph, and none was "
                               f"exported (shared_build.write_sources)")
        return self.sources


def shared_job(graph: SharedGraph, site: Site, checks: Checks) -> Job:
    """The shared build's job: one engine for every preset, checked at each of them."""
    b = site.backend
    return Job(checks, build=lambda cand: compile_cached(site, graph.source(b.name, cand), "shared", cand),
               runners=lambda spec: {p.name: b.validation_runner(site.bundle_dir, graph.spec_for(spec, p.name))
                                     for p in graph.presets},
               bundle_dir=site.bundle_dir)


def build_shared(graph: SharedGraph, sites: dict, checks: Checks, measure: bool, log,
                 resident_sets: dict | None = None) -> dict[str, dict]:
    """Engines entries ``{preset: {backend: entry}}`` and each preset's ``default``, for a shared bundle: per
    backend every candidate through the pipeline, one interleaved latency pass, then one choice per backend
    for all presets."""
    names = [p.name for p in graph.presets]
    work = {b: [CandidateResult.skip(c, c.skip, names) if c.skip else
                run_candidate(shared_job(graph, site, checks), c, log)
                for c in site.backend.candidates(site.profile, shared=True)]
            for b, site in sites.items()}
    for b, site in sites.items():
        discard_failed(work[b], site.bundle_dir)
    if measure:
        t0 = time.perf_counter()
        n = measure_results({b: (lambda r, p, s=sites[b]: s.backend.load(s.bundle_dir, graph.spec_for(r.spec, p)), rs)
                             for b, rs in work.items()}, checks.x, next(iter(sites.values())).profile.request_interval_s)
        log(f"[latency] {n} preset x candidate runners on shared engines measured interleaved "
            f"({time.perf_counter() - t0:.1f} s)")
    out: dict[str, dict] = {p.name: {} for p in graph.presets}
    for b, site in sites.items():
        chosen, why = choose(work[b], measure)
        budget = site.profile.runtime.get("memory_budget_mb")
        if measure and budget is not None:
            sets = {}
            chosen, why = within_budget(work[b], chosen, why, float(budget),
                                        lambda r, s=site, m=sets: _resident_mb(graph, s, r, log, m), log)
            if resident_sets is not None and chosen is not None and chosen.id in sets:
                resident_sets[b] = sets[chosen.id]     # the memory check takes it instead of measuring again
        remove_unchosen(work[b], chosen, site.bundle_dir)
        for p in graph.presets:
            out[p.name][b] = entry_for(Choice(chosen, why, work[b]), p.name, graph.spec_for(chosen.spec, p.name),
                                       site.profile.preferred, measure)
    set_default(out, graph.presets, list(sites), measure)
    return out


def _resident_mb(graph: SharedGraph, site: Site, result, log, sets: dict) -> float | None:
    """MB one candidate's shared engine holds with every preset resident, in a fresh process (the whole
    measurement kept in ``sets`` by candidate id)."""
    from edgevit.build import resident

    specs = {p.name: graph.spec_for(result.spec, p.name) for p in graph.presets}
    try:
        sets[result.id] = resident.measure(site.bundle_dir, site.backend.name, specs)
        return sets[result.id].total_mb
    except EdgevitError as e:
        log(f"[memory] {site.backend.name} {result.id}: not measured: {e}")
        return None


def set_default(out: dict, presets, order: list[str], measure: bool, excluded: dict | None = None) -> None:
    """One default backend for every preset (two shared engines resident would double the memory): the
    fastest by the geometric mean over presets, among the backends not ``excluded`` (name -> why)."""
    excluded = excluded or {}
    totals = {b: EngineEntry("ok", latency_ms=over_presets([out[p.name][b].latency_ms for p in presets]))
              for b in order if b not in excluded}
    default, why = choose_backend(totals, [b for b in order if b not in excluded], measure)
    note = "".join(f"; not {b}: {reason}" for b, reason in excluded.items())
    for p in presets:
        out[p.name]["default"] = {"backend": default, "why": f"for every preset (shared weights): {why}{note}"}



def copy_into(onnx_src: Path, bundle_dir: Path) -> None:
    dst = bundle_dir / ONNX_FILE
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_src, dst)
