"""The build pipeline: profile + model -> export -> quantize -> compile -> validate -> bundle.

Each stage is a plain function of plain inputs. Training, export and engines are cached by content hash
(``edgevit.build.cache``), so a second build reuses them, and says so. The bundle is assembled in a temporary
directory and renamed into place only when every preset is done (``edgevit.bundle``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgevit.version import __version__
from edgevit.backends.base import EngineSpec, get_backend
from edgevit.bundle import BundleWriter, output_bundle
from edgevit.build.cache import Cache, content_key
from edgevit.build import artifacts as engine_cache
from edgevit.build import deferred
from edgevit.build.artifacts import Site, array_digest, compile_cached
from edgevit.errors import EdgevitError
from edgevit.manifest import SCHEMA, SCHEMA_VERSION, EngineEntry, Manifest, PresetEntry
from edgevit.host import host_info, matches_target, tool_versions
from edgevit.models import family_of, model_family
from edgevit.build.profiles import Profile, load_profile
from edgevit.build.selection import choose_backend, faster_beyond_noise
from edgevit.measure import measure_into_records
from edgevit.build.pipeline import (CandidateResult, Checks, Choice, Job, choose, discard_failed, entry_for,
                              measure_results, remove_unchosen, run_candidate)
from edgevit.backends.base import run_engine
from edgevit.build.validate import cohen_kappa, mark_pareto

DEFAULT_MODEL = "supervit-nano"


@dataclass
class BuildOptions:
    target: str
    model: str | None = None
    checkpoint: str | None = None
    data: str | None = None
    out: str | None = None
    presets: list[str] | None = None
    resolutions: list[int] | None = None
    batch: int | None = None             # overrides the profile's static engine batch (throughput engines)
    # Overrides of the profile, as trtexec / Ultralytics users expect them on the command line.
    precision: list[str] | None = None
    max_top1_drop: float | None = None
    min_agreement: float | None = None
    calib_samples: int | None = None
    shared_weights: bool | None = None   # one engine per backend for every preset (SuperViT)
    request_interval_ms: float | None = None   # how often the device serves a request (runtime section)
    memory_budget_mb: float | None = None      # MB the device gives its resident presets (runtime section)
    cache_dir: str = ".edgevit-cache"
    trust_checkpoint: bool = False
    include_checkpoint: bool = True
    measure: bool = True
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


@dataclass
class Obtained:
    model: object
    layout: str
    source: str
    dataset: object
    preprocess: object


# -- obtain ------------------------------------------------------------------------------------------------

def obtain(opts: BuildOptions, cache: Cache) -> Obtained:
    """Load ``--checkpoint`` or train the model (cached by its recipe and data split)."""
    from edgevit.build.artifacts import read_entry, write_entry
    from edgevit.build.checkpoints import load_checkpoint
    from edgevit.data.datasets import input_kind, load_dataset
    from edgevit.models import create_model
    from edgevit.build.train import TrainConfig, data_overrides, recipe_for, train

    log = opts.log
    if opts.checkpoint:
        got = from_checkpoint(opts)
        log(f"[obtain] loaded {opts.checkpoint} ({got.layout} layout, {got.model.variant})")
        return got

    name = opts.model or DEFAULT_MODEL
    extra = {"resolutions": list(opts.resolutions)} if opts.resolutions else {}
    probe = create_model(name, **extra, **data_overrides(name, opts.data))
    ds = load_dataset(opts.data, crop=probe.img_size, channels=probe.in_chans, kind=input_kind(probe))
    cfg = TrainConfig(model=probe.variant, data=opts.data, out=f"runs/{probe.variant}.pt", **extra,
                      **recipe_for(probe.variant))
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("out", "data", "workers", "threads")}
    key = content_key("train", recipe, ds.split_hash(), __version__, tool_versions()["torch"])
    path = cache.path("train", key) / "model.pt"
    hit = cache.get("train", key)
    record = read_entry(hit) if hit else None
    if record is not None and "model.pt" in record["sha256"]:
        log(f"[obtain] training: reused the cached checkpoint {path} (same model, recipe and data split)")
    else:
        log(f"[obtain] no checkpoint given: training {name} on {ds.summary()}")
        with cache.put("train", key) as tmp:
            cfg.out = str(tmp / "model.pt")
            train(cfg, dataset=ds)
            write_entry(tmp, ["model.pt"])
    ck = load_checkpoint(path)
    return Obtained(ck.model, "edgevit", f"trained ({name}, {ds.name})", ds, ds.preprocess)


def from_checkpoint(opts: BuildOptions) -> Obtained:
    """``opts.checkpoint`` with the data set it is validated on (``--data``, else the one it records) and its
    preprocessing (its own, else the data set's); errors name what is missing or does not match."""
    from edgevit.build.checkpoints import load_checkpoint
    from edgevit.data.datasets import available_here, input_kind, load_dataset
    from edgevit.data.preprocess import preprocess_from_dict

    ck = load_checkpoint(opts.checkpoint, opts.model, trust=opts.trust_checkpoint)
    model = ck.model.with_resolutions(opts.resolutions) if opts.resolutions else ck.model
    data = opts.data or ck.meta.get("data", {}).get("name")
    if opts.data and not available_here(opts.data):
        raise EdgevitError(f"--data {opts.data} does not exist")
    if data is None:
        raise EdgevitError(f"checkpoint {opts.checkpoint} ({ck.layout} layout) records no data set; pass --data "
                           f"DIR with the images to calibrate and validate on")
    if not available_here(data):
        raise EdgevitError(f"checkpoint {opts.checkpoint} was trained on {data}, which is not here; pass --data DIR")
    ds = load_dataset(data, crop=model.img_size, channels=model.in_chans, kind=input_kind(model))
    pre = preprocess_from_dict(ck.meta["preprocess"]) if "preprocess" in ck.meta else ds.preprocess
    if input_kind(model) == "images" and pre.crop != model.img_size:  # --resolutions moved the full-size input: keep the resize/crop ratio
        pre = replace(pre, crop=model.img_size, resize=round(pre.resize * model.img_size / pre.crop))
    if model.num_classes != len(ds.classes):
        raise EdgevitError(f"checkpoint {opts.checkpoint} has {model.num_classes} classes but the data set "
                           f"{ds.name} has {len(ds.classes)}")
    return Obtained(model, ck.layout, str(opts.checkpoint), ds, pre)


# -- export ------------------------------------------------------------------------------------------------

def export_sample(plan) -> np.ndarray:
    """The images an export's parity check runs on. They check the ONNX and do not shape it, so the export
    cache key leaves them out; the per-preset and the shared builds take the same ones all the same, so the
    parity each export records does not depend on which build made it."""
    return plan.vx[:max(64, plan.profile.batch)]


def export_cached(model, preset, weights: str, sample, profile: Profile, cache: Cache) -> tuple[Path, dict, bool]:
    from edgevit.build.export import export_preset

    return engine_cache.export_cached(
        "export", (weights, model.variant, model.config, preset.name, profile.opset, profile.batch), cache,
        lambda path: export_preset(model, preset, path, sample, opset=profile.opset, batch=profile.batch).to_dict())


# -- engines -----------------------------------------------------------------------------------------------

@dataclass
class Candidates:
    """One preset on one backend after validation: every candidate's result in preference order (skipped ones
    with why). ``slower``: candidates the probe found slower than the floor on this preset, with why
    (``build_candidates(probe=True)``)."""

    preset: str
    results: list
    slower: dict[str, str] = field(default_factory=dict)

    @property
    def records(self) -> list[dict]:
        return [r.records[self.preset] for r in self.results]


@dataclass(frozen=True)
class Probing:
    """What ``build_candidates`` may probe and skip: ``measured`` (this host is the target), ``not_built``
    (candidate id -> why a larger preset's probe ruled it out), ``probe`` (time the built candidates against
    the floor afterwards: this is the largest preset)."""

    measured: bool = False
    not_built: dict = field(default_factory=dict)
    probe: bool = False


def static_job(site: Site, onnx_path: Path, preset: str, checks: Checks) -> Job:
    """The per-preset build's job: one preset's graph compiled, checked at that preset."""
    backend = site.backend
    return Job(checks, build=lambda cand: compile_cached(site, onnx_path, preset, cand),
               runners=lambda spec: {preset: site.validation_runner(spec)}, bundle_dir=site.bundle_dir,
               notes=lambda spec, p: backend.validation_notes(site.bundle_dir, spec, checks, p))


def build_candidates(site: Site, job: Job, preset, probing: Probing = Probing()) -> Candidates:
    """Build, validate and gate each of the backend's candidates for one preset, in preference order.

    - A candidate that escalates another (INT8 with more layers in FP32) is only tried where that one failed
      the gate, and, when this host is the target (``probing.measured``), only where that one was faster than
      the floor: keeping more layers in FP32 cannot beat full INT8 that already loses to FP32.
    - A candidate a larger preset's probe ruled out (``probing.not_built``) is recorded as not built.
    - ``probing.probe``: time every built candidate against the floor afterwards and return those slower
      beyond the noise in ``Candidates.slower``.
    - A candidate the host cannot build is recorded with the reason; FP32 is the floor and always passes."""
    cands = site.backend.candidates(site.profile)
    floor = next((c for c in cands if c.floor), None)
    done: dict[str, CandidateResult] = {}

    def attempt(cand):
        if cand.id not in done:
            done[cand.id] = run_candidate(job, cand)
        return done[cand.id]

    results = []
    for cand in cands:
        why, verdict = cand.skip, "skipped"
        if not why and cand.id in probing.not_built:
            why, verdict = probing.not_built[cand.id], "not built"
        if cand.escalates and not why:
            base = done.get(cand.escalates)
            if base is None or base.passed:
                continue
            why, verdict = (_cannot_win(site, base, attempt(floor), job.checks.x)
                            if probing.measured and floor is not None else None), "not tried"
        results.append(CandidateResult.skip(cand, why, [preset.name], verdict) if why else attempt(cand))
    slower = (_slower_than_floor(site, list(done.values()), floor.id, preset, job.checks.x)
              if probing.probe and probing.measured and floor is not None else {})
    discard_failed(list(done.values()), site.bundle_dir)
    return Candidates(preset.name, results, slower)


def _probe(site: Site, results: dict, sample) -> dict:
    """A short interleaved latency probe of ``results`` (key -> CandidateResult): key -> latency record."""
    records = {k: {} for k in results}
    measure_into_records({k: (lambda r=r: site.load(r.spec), records[k]) for k, r in results.items()},
                         sample, budget_s=0.05, max_iters=20, interval_s=site.profile.request_interval_s)
    return {k: rec["latency_ms"] for k, rec in records.items()}


def _cannot_win(site: Site, base: CandidateResult, floor: CandidateResult, sample) -> str | None:
    """Why escalating ``base`` (a candidate that failed the gate) cannot pay: it was not faster than the floor
    beyond the noise in a short interleaved probe. None where it was, or where neither runs on this host."""
    if not base.runs_here or not floor.runs_here:
        return None
    lat = _probe(site, {"base": base, "floor": floor}, sample)
    faster, figures = faster_beyond_noise(lat["base"], lat["floor"])
    if faster:
        return None
    return (f"not tried: {base.id}, with every layer it quantizes, was not faster than {floor.id} here "
            f"({figures}, probe), so keeping more layers in {floor.candidate.precision} cannot win")


def _slower_than_floor(site: Site, done: list, floor_id: str, preset, sample) -> dict[str, str]:
    """The candidates built for ``preset`` (the largest: the most compute for a reduced precision to gain on)
    that ran slower than the floor beyond the noise, whether or not they passed the gate, with why. Smaller
    presets do not build them: on every host measured, a reduced precision's gain over FP32 grew with the
    preset's FLOPs (docs/benchmarks/build-time-avx2.md)."""
    runs = {r.id: r for r in done if r.runs_here}
    if floor_id not in runs or len(runs) < 2:
        return {}
    lat = _probe(site, runs, sample)
    out = {}
    for cid in runs:
        slower, _ = faster_beyond_noise(lat[floor_id], lat[cid]) if cid != floor_id else (False, "")
        if slower:
            ratio = lat[cid]["p50"] / lat[floor_id]["p50"]
            rounds = sum(a > b for a, b in zip(lat[cid]["rounds"], lat[floor_id]["rounds"]))
            out[cid] = (f"not built: at {preset.name} ({preset.flops / 1e6:.1f} MFLOPs, the preset with the most "
                        f"compute to gain on) {cid} took {ratio:.2f}x the time of {floor_id}, slower in {rounds}/"
                        f"{len(lat[cid]['rounds'])} rounds of an interleaved probe on this host")
    return out


def measure_candidates(sites: dict, work: dict, vx, log) -> None:
    """Latency of every passing candidate of every preset and backend (``work``: (preset, backend) ->
    Candidates; ``sites``: backend -> Site), in one interleaved pass, so that the choice between precisions,
    between backends and between presets (the Pareto front) rests on figures taken under the same
    conditions. Writes ``latency_ms`` into the candidates' records."""
    t0 = time.perf_counter()
    interval = next(iter(sites.values())).profile.request_interval_s if sites else 0.0
    n = measure_results({f"{p}/{b}": (lambda r, _, s=sites[b]: s.load(r.spec), c.results)
                         for (p, b), c in work.items()}, vx, interval)
    log(f"[latency] {n} passing candidates measured interleaved"
        + (f", each request after {interval * 1e3:g} ms idle (runtime.request_interval_ms)" if interval else "")
        + f" ({time.perf_counter() - t0:.1f} s)")


def engine_entry(cands: Candidates, bundle_dir: Path, profile: Profile, measured: bool) -> EngineEntry:
    """The manifest entry of one preset on one backend: the chosen candidate, why, and every candidate.
    The other candidates' files leave the bundle."""
    chosen, why = choose(cands.results, measured)
    remove_unchosen(cands.results, chosen, bundle_dir)
    return entry_for(Choice(chosen, why, cands.results), cands.preset, chosen.spec, profile.preferred, measured)


def _candidates_line(name: str, cands: Candidates, acc: str, scene: bool) -> str:
    parts = []
    for r in cands.results:
        rec = r.records[cands.preset]
        if r.skipped:
            parts.append(f"{r.id} {r.skipped_as}")
            continue
        mark = "ok" if r.passed else "FAILS GATE"
        kappa = f" kappa {rec['kappa']:.4f}" if scene else ""
        lo = rec["gate"]["agreement_interval"][0]
        parts.append(f"{r.id} {mark} {acc} {100 * rec['top1']:.2f}%{kappa} agree {100 * rec['agreement']:.2f}% "
                     f"(>= {100 * lo:.1f}%)")
    return f"{name}: " + ", ".join(parts)


# -- the pipeline ------------------------------------------------------------------------------------------

def resolve_profile(opts: BuildOptions) -> Profile:
    """The target's profile with the command line's overrides, validated like the file."""
    profile = load_profile(opts.target)
    if opts.batch is not None and not 1 <= opts.batch <= 1024:
        raise EdgevitError(f"--batch {opts.batch}: expected 1 to 1024")
    return profile.with_overrides(**{"batch": opts.batch, "precision": opts.precision,
                                     "accuracy.max_top1_drop": opts.max_top1_drop,
                                     "accuracy.min_agreement": opts.min_agreement,
                                     "calibration.samples": opts.calib_samples,
                                     "shared_weights": opts.shared_weights,
                                     "runtime.request_interval_ms": opts.request_interval_ms,
                                     "runtime.memory_budget_mb": opts.memory_budget_mb})


def available_backends(profile: Profile, log) -> tuple[list, dict]:
    """The profile's backends that this host has, in the profile's order, and why the others are missing."""
    backends, unavailable = [], {}
    for name in profile.backends:
        try:
            b = get_backend(name)
            ok, why = b.available()
        except EdgevitError as e:
            ok, why = False, str(e)
        if ok:
            backends.append(b)
        else:
            unavailable[name] = why
            log(f"[build] backend {name} is not available here: {why}")
    if not backends:
        raise EdgevitError(f"none of the target's backends ({', '.join(profile.backends)}) is available here")
    return backends, unavailable


_PRESET_FIELDS = ("name", "resolution", "keep_rate", "flops", "gflops", "params", "onnx", "export", "torch",
                  "engines")


def _preset_record(p, onnx_rel: str, export_report: dict, ref: np.ndarray, vy: np.ndarray) -> PresetEntry:
    """A preset's manifest record before its engines are chosen."""
    return PresetEntry(p.name, p.resolution, p.keep_rate, p.flops, round(p.gflops, 6), p.params, onnx_rel,
                       export_report, {"top1": float((ref.argmax(-1) == vy).mean()),
                                       "kappa": cohen_kappa(ref.argmax(-1), vy), "samples": int(len(vy))},
                       present=_PRESET_FIELDS)


def engine_mix(entries: list[PresetEntry]) -> dict:
    """How many presets ship each precision, per backend, and how many run on each backend by default."""
    mix: dict = {}
    for e in entries:
        for b, eng in e.engines.items():
            if eng.precision:
                counts = mix.setdefault(b, {})
                counts[eng.precision] = counts.get(eng.precision, 0) + 1
    defaults: dict = {}
    for e in entries:
        b = e.default_backend()
        if b:
            defaults[b] = defaults.get(b, 0) + 1
    return {"precisions": mix, "defaults": defaults}


def _choice_line(e: PresetEntry, backends) -> str:
    parts = []
    for b in backends:
        eng = e.engines[b.name]
        lat = f" {eng.latency():.3f} ms" if eng.latency_ms else ""
        floor = next((c for c in eng.candidates if c.get("floor") and c.get("latency_ms")), None)
        vs = (f" (fp32 {floor['latency_ms']['p50']:.3f} ms)" if floor and floor["id"] != eng.chosen["id"] else "")
        pend = " (pending device build)" if eng.status != "ok" else ""
        parts.append(f"{b.name} {eng.chosen['id']}{lat}{vs}{pend}")
    return f"[choose] {e.name:<10} " + " | ".join(parts) + f"  -> default {e.default_backend()}"



@dataclass
class Plan:
    """What one build works on, fixed before any export; the stages read it and never change it."""

    opts: BuildOptions
    profile: Profile
    got: Obtained
    out: Path
    presets: list
    backends: list
    unavailable: dict
    measure: bool            # this host is the target: latencies are measured and decide
    host_why: str | None
    weights: str
    cx: np.ndarray           # calibration inputs
    vx: np.ndarray           # validation inputs and labels
    vy: np.ndarray
    obtain_seconds: float = 0.0   # loading or training the model: not part of the build proper

    @property
    def model(self):
        return self.got.model

    @property
    def scene(self) -> bool:  # per-pixel mapping reports overall accuracy and Cohen's kappa
        return getattr(self.model, "input_kind", "images") == "patches"

    @property
    def acc(self) -> str:
        return "OA" if self.scene else "top-1"


def plan_build(opts: BuildOptions, cache: Cache) -> Plan:
    """Profile, model (loaded or trained), data splits, backends and whether this host is the target."""
    from edgevit.build.train import weight_digest

    log = opts.log
    profile = resolve_profile(opts)
    if opts.out:
        output_bundle(opts.out)          # before training or export, not after
    t0 = time.perf_counter()
    got = obtain(opts, cache)
    obtain_seconds = time.perf_counter() - t0
    got.model.eval()
    model, ds, pre = got.model, got.dataset, got.preprocess
    out = output_bundle(opts.out or Path("bundles") / f"{model.variant}-{profile.name}")
    presets = [model.preset(n) for n in opts.presets] if opts.presets else model.presets()
    log(f"[build] {model.variant} -> {profile.name} ({profile.backend}"
        f"{', fallbacks ' + ', '.join(profile.fallbacks) if profile.fallbacks else ''}; precision preference "
        f"{' > '.join(profile.precision)}); {len(presets)} presets -> {out}")
    vx, vy = ds.val.arrays(pre)
    cx, _ = ds.calib.arrays(pre, limit=profile.calibration["samples"])
    log(f"[data] {ds.summary()}; calibrating on {len(cx)}, validating on {len(vx)} images")
    backends, unavailable = available_backends(profile, log)
    host_ok, host_why = matches_target(profile)
    if not host_ok:
        log(f"[build] latencies are not measured: {host_why}; the profile's preference order decides")
    if profile.shared_weights and family_of(model).shared_presets is None:
        raise EdgevitError(f"--shared-weights (profile shared_weights) is built for models whose family has a "
                           f"shared-weight graph (SuperViT); {model.variant} has none")
    return Plan(opts, profile, got, out, presets, backends, unavailable, opts.measure and host_ok, host_why,
                weight_digest(model), cx, vx, vy, obtain_seconds)


def references(plan: Plan) -> dict[str, np.ndarray]:
    """Torch FP32 logits of every preset on the validation split: what every engine is compared with."""
    from edgevit.build.reference import TorchRunner

    return {p.name: run_engine(TorchRunner(plan.model, p.resolution, p.keep_rate), plan.vx) for p in plan.presets}


@dataclass
class Engines:
    """The engines stage's result: each preset's record, and per (preset, backend) its candidates (static
    engines) or the shared-weight build's choice (``shared``)."""

    entries: list[dict]
    work: dict = field(default_factory=dict)
    shared: dict | None = None
    resident: dict = field(default_factory=dict)    # backend -> resident.Resident, sets measured already
    sites: dict = field(default_factory=dict)       # backend -> Site (static engines)
    shared_check: dict | None = None                # the shared engines' memory against the presets' own


def sites(plan: Plan, cache: Cache, tmp: Path, compiled: str | None) -> dict[str, Site]:
    """Backend name -> where its candidates are built: this build's bundle, cache and calibration set."""
    digest = array_digest(plan.cx)
    return {b.name: Site(b, plan.profile, cache, tmp, plan.cx, digest, compiled) for b in plan.backends}


def static_engines(plan: Plan, refs: dict, cache: Cache, tmp: Path, compiled: str) -> Engines:
    """Per preset, largest first (its probe tells which reduced precisions the smaller presets need not
    build): export, then every backend's candidates, built, validated and gated."""
    log, profile, vy = plan.opts.log, plan.profile, plan.vy
    order = sorted(plan.presets, key=lambda p: -p.flops)
    checks, where = Checks(plan.vx, vy, refs, profile.accuracy), sites(plan, cache, tmp, compiled)
    not_built = {b.name: {} for b in plan.backends}
    entries, work = [], {}
    for i, p in enumerate(order, 1):
        t0 = time.perf_counter()
        ref = refs[p.name]
        onnx_src, report, hit = export_cached(plan.model, p, plan.weights, export_sample(plan), profile,
                                              cache)
        onnx_rel = Path("onnx") / f"{p.name}.onnx"
        (tmp / onnx_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_src, tmp / onnx_rel)
        kappa = f" kappa {cohen_kappa(ref.argmax(-1), vy):.4f}" if plan.scene else ""
        line = [f"[{i:>2}/{len(order)}] {p.name:<10} export {'(cached)' if hit else 'done'} "
                f"parity {report['parity_max_abs']:.1e}  torch {plan.acc} {100 * checks.torch_top1(p.name):.2f}%"
                f"{kappa}"]
        for b in plan.backends:
            probing = Probing(plan.measure, dict(not_built[b.name]), probe=i == 1 and len(order) > 1)
            work[(p.name, b.name)] = c = build_candidates(
                where[b.name], static_job(where[b.name], tmp / onnx_rel, p.name, checks), p, probing)
            line.append(_candidates_line(b.name, c, plan.acc, plan.scene))
            not_built[b.name].update(c.slower)
        log(" | ".join(line) + f"  ({time.perf_counter() - t0:.1f} s)")
        for b in plan.backends:
            for cid, why in work[(p.name, b.name)].slower.items():
                log(f"[probe] {b.name} {cid}: {why.removeprefix('not built: ')}; not built for smaller presets")
        entries.append(_preset_record(p, onnx_rel.as_posix(), report, ref, vy))
    entries.sort(key=lambda e: [q.name for q in plan.presets].index(e.name))
    return Engines(entries, work, sites=where)


def shared_engines(plan: Plan, refs: dict, cache: Cache, tmp: Path) -> Engines:
    """One engine per backend for every preset (``--shared-weights``): export the shared graph, and each
    preset's static graph where a backend builds a branch per preset, then build and choose."""
    from edgevit.build import shared as shared_build

    log, profile = plan.opts.log, plan.profile
    src, report, hit = shared_build.export_cached(plan.model, plan.weights, export_sample(plan),
                                                  profile, cache)
    shared_build.copy_into(src, tmp)
    shared_build.write_inputs(plan.model, plan.presets, tmp)
    log(f"[export] every preset in one graph {'(cached)' if hit else 'done'}: parity "
        f"{report['parity_max_abs']:.1e} over {report['presets_checked']} presets")
    entries = []
    for i, p in enumerate(plan.presets, 1):
        entries.append(_preset_record(p, shared_build.ONNX_FILE, report, refs[p.name], plan.vy))
        log(f"[{i:>2}/{len(plan.presets)}] {p.name:<10} torch {plan.acc} {100 * entries[-1].torch['top1']:.2f}%")
    with tempfile.TemporaryDirectory(prefix="edgevit-sources-") as scratch:
        sources = None
        if shared_build.needs_preset_graphs(plan.backends, profile):
            # OpenVINO's branches engine is built from each preset's static graph (the export cache keeps them)
            graphs = {}
            for p in plan.presets:
                graphs[p.name], _, hit = export_cached(plan.model, p, plan.weights, export_sample(plan),
                                                       profile, cache)
                log(f"[export] {p.name} static graph {'(cached)' if hit else 'done'}")
            sources = shared_build.write_sources(graphs, Path(scratch) / "sources.json")
        graph_sources = shared_build.write_graph_sources(tmp / shared_build.ONNX_FILE, tmp, plan.model, plan.presets,
                                                         Path(scratch) / "graph-sources.json")
        graph = shared_build.SharedGraph(plan.model, plan.presets, tmp / shared_build.ONNX_FILE, sources,
                                         graph_sources)
        measured = {}
        chosen = shared_build.build_shared(graph, sites(plan, cache, tmp, None),
                                           Checks(plan.vx, plan.vy, refs, profile.accuracy), plan.measure, log,
                                           measured)
    if not plan.measure:
        return Engines(entries, shared=chosen)
    return _memory_rule(plan, Engines(entries, shared=chosen, resident=measured), cache, tmp)


def _memory_rule(plan: Plan, engines: Engines, cache: Cache, tmp: Path) -> Engines:
    """Shared engines that hold more than the presets' own engines would are not the default; where that is
    every backend's, the shared engines leave the bundle (``shared`` None: the per-preset build follows)."""
    from edgevit.build import memory as build_memory
    from edgevit.build import shared as shared_build

    largest = max(plan.presets, key=lambda p: p.flops)
    reference, _, _ = export_cached(plan.model, largest, plan.weights, export_sample(plan), plan.profile, cache)
    engines.resident, engines.shared_check = build_memory.shared_check(plan, engines.shared, tmp, reference, cache,
                                                                       engines.resident)
    excluded = {b: (f"{c['shared_mb']:.0f} MB with all {c['presets']} presets resident, more than {c['presets']} x "
                    f"{c['per_preset_mb']:.0f} MB of one preset's own engine")
                for b, c in engines.shared_check.items() if not c["passed"]}
    if len(excluded) < len(plan.backends):
        if excluded:
            shared_build.set_default(engines.shared, plan.presets, [b.name for b in plan.backends], True, excluded)
        return engines
    for rel in {shared_build.ONNX_FILE, shared_build.INPUTS_FILE,
                *(f for e in engines.shared.values() for b in plan.backends for f in
                  EngineSpec(**e[b.name].engine).files)}:
        (tmp / rel).unlink(missing_ok=True)
    engines.shared, engines.resident = None, {}
    return engines


def engines_stage(plan: Plan, refs: dict, cache: Cache, tmp: Path, compiled: str) -> Engines:
    """The engines of every preset: shared-weight ones where the profile asks and they hold less memory than
    the presets' own engines, else per preset."""
    if not plan.profile.shared_weights:
        return static_engines(plan, refs, cache, tmp, compiled)
    engines = shared_engines(plan, refs, cache, tmp)
    if engines.shared is not None:
        return engines
    plan.opts.log("[memory] no backend's shared-weight engine holds less than the presets' own engines: "
                  "building an engine per preset instead")
    static = static_engines(plan, refs, cache, tmp, compiled)
    static.shared_check = engines.shared_check
    return static


def choose_engines(plan: Plan, engines: Engines, tmp: Path) -> list[PresetEntry]:
    """Measure every passing candidate (static engines, on the target), then per preset the engine of each
    backend and the default backend. Returns the preset records with their engines."""
    backends = plan.backends
    if engines.shared is None and plan.measure:
        measure_candidates(engines.sites, engines.work, plan.vx, plan.opts.log)
    for e in engines.entries:
        for b in backends:
            e.engines[b.name] = (engines.shared[e.name][b.name] if engines.shared is not None else
                                 engine_entry(engines.work[(e.name, b.name)], tmp, plan.profile, plan.measure))
        for name, why in plan.unavailable.items():
            e.engines[name] = EngineEntry("unavailable", reason=why, present=("status", "reason"))
        if engines.shared is not None:
            e.default = engines.shared[e.name]["default"]
        else:
            default, why = choose_backend(e.engines, [b.name for b in backends], plan.measure)
            e.default = {"backend": default, "why": why}
        plan.opts.log(_choice_line(e, backends))
    return engines.entries


def assemble(plan: Plan, entries: list[PresetEntry], checkpoint: str | None, seconds: float) -> Manifest:
    """The bundle's manifest."""

    model, ds, pre, profile = plan.model, plan.got.dataset, plan.got.preprocess, plan.profile
    record = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgevit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "name": plan.out.name,
        "model": {"name": model.variant, "family": model_family(model.variant), "config": model.config,
                  "params": sum(t.numel() for t in model.parameters()), "source": plan.got.source,
                  "layout": plan.got.layout, "weights_digest": plan.weights},
        "target": profile.to_dict(), "profile_file": profile.path,
        "backend": plan.backends[0].name, "backends": [b.name for b in plan.backends],
        "unavailable_backends": plan.unavailable,
        "precision": profile.precision, "opset": profile.opset, "engine_mix": engine_mix(entries),
        "input": {"name": "input", "shape": [profile.batch, model.in_chans, model.img_size, model.img_size],
                  "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "shape": [profile.batch, model.num_classes], "dtype": "float32"},
        "preprocess": pre.to_dict(), "labels": list(ds.classes),
        "data": {"name": ds.name, "split_hash": ds.split_hash(), "calibration_samples": int(len(plan.cx)),
                 "validation_samples": int(len(plan.vx)),
                 "sizes": {"train": len(ds.train), "calib": len(ds.calib), "val": len(ds.val)}},
        "tools": tool_versions(), "host": host_info(),
        "latency_measured_here": plan.measure, "latency_note": None if plan.measure else plan.host_why,
        "checkpoint": checkpoint,
        "build_seconds": round(seconds, 1),
        "obtain_seconds": round(plan.obtain_seconds, 1),   # of build_seconds: loading or training the model
        "presets": [],
    }
    manifest = Manifest.from_dict(record)
    manifest.presets = entries
    return manifest


def build(opts: BuildOptions) -> Path:
    """profile + model -> references -> export and candidates -> measure and choose -> device engines ->
    manifest -> bundle, renamed into place only when complete."""
    from edgevit.build import budget
    from edgevit.build import memory as build_memory
    from edgevit.build.checkpoints import save_checkpoint
    from edgevit.manifest_report import manifest_report

    t_start, log = time.perf_counter(), opts.log
    cache = Cache(opts.cache_dir)
    plan = plan_build(opts, cache)
    refs = references(plan)
    with BundleWriter(plan.out) as writer, cache.scratch("compiled") as compiled:
        tmp = writer.tmp
        engines = engines_stage(plan, refs, cache, tmp, str(compiled))
        entries = choose_engines(plan, engines, tmp)
        memory = build_memory.record(plan, entries, tmp, engines.resident)
        if memory is not None and engines.shared_check:
            memory["shared_check"] = engines.shared_check
        memory = budget.apply(plan, entries, memory, tmp)
        device = deferred.defer(plan.backends, tmp, entries, plan.profile,
                                Checks(plan.vx, plan.vy, refs, plan.profile.accuracy), opts)
        mark_pareto(entries, plan.backends[0].name)     # after the device build, which may add latencies
        checkpoint = None
        if opts.include_checkpoint:
            checkpoint = "model.pt"
            ds = plan.got.dataset
            save_checkpoint(tmp / checkpoint, plan.model, preprocess=plan.got.preprocess.to_dict(),
                            classes=list(ds.classes), data={"name": ds.name, "split_hash": ds.split_hash()})
        seconds = time.perf_counter() - t_start
        manifest = assemble(plan, entries, checkpoint, seconds)
        manifest.memory = memory
        if device is not None:
            device.record(manifest)
        path = writer.commit(manifest, manifest_report(manifest.to_dict()))
    log(f"[bundle] {path} written ({len(entries)} presets, {seconds:.0f} s, of which {plan.obtain_seconds:.0f} s "
        f"obtaining the model); inspect it with: edgevit inspect {path}")
    if device is not None:
        pending = device.pending(manifest, path, plan.profile.name)
        if pending:
            log(f"[bundle] NOT DONE: {pending} Until then the bundle runs on: "
                f"{', '.join(b.name for b in plan.backends if not b.deferred_build) or 'nothing'}")
    return path
