"""TensorRT engines from a bundle's kit: built where TensorRT and the GPU are, validated, then recorded.

The kit (written by every build that targets TensorRT) holds per preset the explicit-precision ONNX, its
build settings and the equivalent ``trtexec`` line, plus a validation subset with the torch FP32 logits of
every preset, so a device without torch can check its own engines. ``finish`` builds, validates, gates
and measures the pending engines of a bundle directory in place; ``edgevit build`` calls it when the build
host is itself a suitable GPU machine, and ``edgevit engine build BUNDLE`` calls it on the device.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgevit.backends.base import Candidate, EngineSpec
from edgevit.bundle_paths import inside
from edgevit.manifest import PENDING
from edgevit.build.pipeline import Choice, Checks
from edgevit.errors import EdgevitError

VALIDATION_FILE = "kit/validation.npz"
MAX_VALIDATION_BYTES = 64 << 20   # the inputs; a device validates on at most this much of the split


# -- the validation subset ---------------------------------------------------------------------------------

def write_validation(bundle_dir: Path, x: np.ndarray, y: np.ndarray, refs: dict[str, np.ndarray]) -> dict:
    n = max(1, min(len(x), MAX_VALIDATION_BYTES // max(1, x[:1].nbytes)))
    arrays = {"inputs": np.ascontiguousarray(x[:n], np.float32), "labels": np.asarray(y[:n], np.int64)}
    arrays.update({f"torch_logits/{name}": np.asarray(r[:n], np.float32) for name, r in refs.items()})
    path = bundle_dir / VALIDATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return {"file": VALIDATION_FILE, "samples": int(n), "of": int(len(x))}


def read_validation(bundle_dir: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    path = inside(bundle_dir, Path(VALIDATION_FILE).as_posix(), "the validation subset")
    if not path.is_file():
        raise EdgevitError(f"bundle {bundle_dir}: {VALIDATION_FILE} is missing; rebuild the bundle with edgevit "
                           f">= 0.1 (it carries the validation subset the device checks its engines on)")
    with np.load(path, allow_pickle=False) as z:
        if missing := sorted({"inputs", "labels"} - set(z.files)):
            raise EdgevitError(f"{path}: has no {missing} (it has {sorted(z.files)[:8]}); rebuild the bundle")
        refs = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("torch_logits/")}
        return z["inputs"], z["labels"], refs


def refuse_links_out(bundle: Path) -> None:
    """The bundle is copied whole into the rewritten one: a link out of it would bring in a file from
    elsewhere, listed and shipped as the bundle's own."""
    root = Path(bundle).resolve()
    for folder, dirs, files in os.walk(bundle):
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                raise EdgevitError(f"bundle {bundle}: {p.relative_to(bundle)} is a link to {p.resolve()}, outside the "
                                   f"bundle; a bundle's files must be inside its folder")


# -- the kit's instructions --------------------------------------------------------------------------------

def _trt(e):
    """A preset's TensorRT engine entry where it has one with an engine spec, else None."""
    t = e.engines.get("tensorrt")
    return t if t is not None and t.engine is not None else None


def write_kit(bundle_dir: Path, entries: list, target: dict, reason: str | None) -> None:
    """kit/README.md, kit/build_engines.sh and kit/settings.json, from the presets' tensorrt specs."""
    specs = [(e.name, _trt(e).engine) for e in entries if _trt(e) is not None]
    # A shared-weight engine serves every preset: its one line once.
    lines = list(dict.fromkeys(s["trtexec"] for _, spec in specs
                               for s in [spec["settings"], *spec["settings"].get("candidates", [])]))
    kit = bundle_dir / "kit"
    kit.mkdir(parents=True, exist_ok=True)
    (kit / "settings.json").write_text(json.dumps({name: spec["settings"] for name, spec in specs}, indent=2) + "\n")
    script = kit / "build_engines.sh"
    script.write_text("#!/bin/sh\n# The TensorRT builds `edgevit engine build --trtexec` runs, as plain trtexec lines.\n"
                      "# Engines built by this script alone are NOT validated and NOT recorded in manifest.json;\n"
                      "# prefer `edgevit engine build <bundle>`, which builds the same engines and checks them.\n"
                      "set -e\ncd \"$(dirname \"$0\")/..\"\nmkdir -p engines/tensorrt\n"
                      "TRTEXEC=\"${TRTEXEC:-trtexec}\"\n"
                      + "".join("\"$TRTEXEC\" " + line.split(" ", 1)[1] + "\n" for line in lines))
    script.chmod(0o755)
    dev = target.get("device", {})
    t = target.get("tensorrt", {})
    needs = [f"TensorRT {t.get('version', '10')}.x"]
    if dev.get("compute_capability"):
        needs.append(f"a GPU of compute capability {dev['compute_capability']}")
    if dev.get("kind") == "jetson":
        needs.append(f"JetPack {dev.get('jetpack') or '6'} (L4T R36)" if (dev.get("jetpack") or "6") == "6"
                     else f"JetPack {dev.get('jetpack')}")
    status = (f"**The TensorRT engines are not built yet**: {reason}." if reason else
              "The engines were built by `edgevit build` on a matching GPU; this kit rebuilds them.")
    (kit / "README.md").write_text(f"""# On-device TensorRT build kit ({target.get('name')})

{status}

TensorRT engines are tied to the GPU and the TensorRT version that build them, so they are built on the
device: {', '.join(needs)}. Everything else is done and validated: `tensorrt/*.onnx` are the explicit-precision
models the engines are built from (INT8 as Q/DQ, FP16 as FP16 types), checked against torch FP32 with ONNX
Runtime on the CPU; the figures are in `../manifest.json`.

On the device, with edgevit installed (`pip install edgevit[tensorrt]`, or the system TensorRT of JetPack):

    edgevit engine build path/to/this/bundle

builds every pending engine with the TensorRT Python API, validates it on `validation.npz` (the torch FP32
logits of every preset), measures its latency and updates the manifest; the bundle is replaced only when
all of that succeeded. `--trtexec` runs the same builds through trtexec instead; `build_engines.sh` is those
trtexec lines on their own (no validation, no manifest update). Build settings per preset: `settings.json`.

| preset | precision | trtexec |
|---|---|---|
""" + "".join(f"| {name} | {s['precision']} | `{s['trtexec']}` |\n"
              for name, spec in specs for s in [spec["settings"], *spec["settings"].get("candidates", [])]))


# -- building, validating and recording --------------------------------------------------------------------

def _trtexec() -> str:
    for cand in (shutil.which("trtexec"), "/usr/src/tensorrt/bin/trtexec"):
        if cand and Path(cand).is_file():
            return cand
    raise EdgevitError("--trtexec: trtexec is not on PATH nor at /usr/src/tensorrt/bin/trtexec (JetPack's place)")


@dataclass(frozen=True)
class DeviceBuild:
    """How the device builds its engines: through trtexec or the TensorRT Python API, with its output shown
    (``verbose``), whether latencies are measured (each request after ``interval_s`` idle: None, the bundle's
    ``runtime.request_interval_ms``), and where progress goes."""

    use_trtexec: bool = False
    measure: bool = True
    interval_s: float | None = None
    verbose: bool = False
    log: Callable[[str], None] = print


def _build_one(bundle_dir: Path, settings: dict, how: DeviceBuild) -> None:
    from edgevit.backends.tensorrt.kit import TIMING_CACHE
    from edgevit.backends.tensorrt.build import build_engine_file, trtexec_command

    engine = bundle_dir / settings["engine"]
    engine.parent.mkdir(parents=True, exist_ok=True)
    if how.use_trtexec:
        cmd = trtexec_command(settings, settings["onnx"], settings["engine"], TIMING_CACHE.as_posix())
        cmd[0] = _trtexec()
        proc = subprocess.run(cmd, cwd=bundle_dir, capture_output=not how.verbose, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout or "")[-2000:] if not how.verbose else ""
            raise EdgevitError(f"trtexec failed (exit {proc.returncode}) building {settings['engine']}:\n{tail}")
    else:
        build_engine_file(bundle_dir / settings["onnx"], engine, settings, bundle_dir / TIMING_CACHE, how.verbose,
                          how.log)


def _builder(bundle_dir: Path, options: list[dict], how: DeviceBuild):
    """``Job.build`` for the kit's settings ``options``: a candidate is one of them, by precision."""
    by_id = {s["precision"]: s for s in options}

    def build(cand):
        s = by_id[cand.id]
        _build_one(bundle_dir, s, how)
        return EngineSpec("tensorrt", s["precision"], s["engine"], settings=s), False

    return build


def device_job(bundle_dir: Path, preset: str, options: list[dict], checks, how: DeviceBuild):
    """The device build's job in the candidate pipeline: a candidate is one of the kit's settings for
    ``preset`` (the profile's precision first: the floor), built with TensorRT here, checked and measured
    at once (one engine at a time: a GPU holds few)."""
    from edgevit.backends.tensorrt import runner
    from edgevit.backends.tensorrt.kit import refit_from
    from edgevit.build.pipeline import Job

    build = _builder(bundle_dir, options, how)

    def runners(spec):
        s = {**spec.settings, "host_code_allowed": True}      # a plan this build has just made here
        return {preset: runner.TensorRTRunner(bundle_dir / s["engine"], s, refit_from(bundle_dir, s))}

    return Job(checks, build, runners, bundle_dir, measure_now=how.measure, interval_s=how.interval_s or 0.0,
               floor_ships=False)


def shared_device_job(bundle_dir: Path, specs: dict, options: list[dict], checks, how: DeviceBuild):
    """The device build's job for a shared-weight engine: one engine built with an optimisation profile per
    preset, checked (and measured) at every preset of ``specs`` (preset -> its ``EngineSpec``, whose settings
    carry its binding), each a context on its own profile."""
    from edgevit.backends.shared import SharedRunner, preset_feeds
    from edgevit.backends.tensorrt import runner
    from edgevit.backends.tensorrt.kit import refit_from
    from edgevit.build.pipeline import Job

    build = _builder(bundle_dir, options, how)

    def runners(spec):
        s = {**spec.settings, "host_code_allowed": True}      # a plan this build has just made here
        base = runner.TensorRTRunner(bundle_dir / s["engine"], s, refit_from(bundle_dir, s))
        users = [len(specs)]

        def release():
            users[0] -= 1
            if users[0] == 0:
                base.close()

        return {name: SharedRunner(base, preset_feeds(bundle_dir, sp.settings["shared"]), release)
                for name, sp in specs.items()}

    return Job(checks, build, runners, bundle_dir, measure_now=how.measure, interval_s=how.interval_s or 0.0,
               floor_ships=False)


def attach_profiles(bundle_dir: Path, entries) -> None:
    """Every shared-weight TensorRT engine's optimisation profiles (one per preset, ``profiles``) and its
    trtexec line with them, in each preset's settings."""
    from edgevit.backends.tensorrt.build import shell_line, trtexec_command
    from edgevit.backends.tensorrt.kit import TIMING_CACHE
    from edgevit.backends.tensorrt.profiles import preset_profiles

    groups: dict = {}
    for e in entries:
        t = _trt(e)
        if t is not None and t.engine["settings"].get("shared"):
            groups.setdefault(t.engine["settings"]["engine"], []).append((e.name, t.engine["settings"]))
    for members in groups.values():
        first = members[0][1]
        profiles = preset_profiles(bundle_dir, first["onnx"], [(name, s["shared"]) for name, s in members])
        for _, s in members:
            s["profiles"] = profiles
            s["trtexec"] = shell_line(trtexec_command(s, s["onnx"], s["engine"], TIMING_CACHE.as_posix()))


def _finish_shared(bundle_dir: Path, group: list, checks, todo, force: bool, how: DeviceBuild) -> dict:
    """``finish`` for the presets of one shared-weight engine: built once, passed only if it passes at every
    preset (as the shared build's candidates), recorded in every preset's entry."""
    from edgevit.backends.tensorrt.gpu import device_info
    from edgevit.build.pipeline import choose, discard_failed, remove_unchosen, run_candidate

    here = device_info()
    wanted = [e for e in group if force or (_trt(e).status == PENDING and (not todo or e.name in todo))]
    if not wanted:
        return {"built": 0, "failed": [], "built_on": here}
    missing = [e.name for e in group if e.name not in checks.refs]
    if missing:
        raise EdgevitError(f"{VALIDATION_FILE} has no torch logits for presets {missing}")
    specs = {e.name: EngineSpec(**_trt(e).engine) for e in group}
    first = specs[group[0].name]
    options = [first.settings] + list(first.settings.get("candidates", []))
    job = shared_device_job(bundle_dir, specs, options, checks, how)
    results = [run_candidate(job, c) for c in _candidates(options)]
    for r in results:
        for e in group:
            _log_engine(e.name, r, how.log)
    chosen, why = choose(results, measured=how.measure)
    discard_failed(results, bundle_dir)
    if chosen is None:
        for e in group:
            t = _trt(e)
            t.status = "failed-validation"
            t.extra["device_attempts"] = [r.records[e.name] for r in results]
            t.reason = "; ".join(f"{r.id}: {r.records[e.name]['reason']}" for r in results)
        return {"built": 0, "failed": [e.name for e in group], "built_on": here}
    remove_unchosen(results, chosen, bundle_dir)
    for e in group:
        _device_entry(_trt(e), specs[e.name], Choice(chosen, why, results), e.name, here)
    return {"built": 1, "failed": [], "built_on": here}


def _candidates(options: list[dict]) -> list[Candidate]:
    return [Candidate(s["precision"], s["precision"], s.get("recipe", s["precision"]), floor=i == 0)
            for i, s in enumerate(options)]


def finish(bundle_dir: Path, entries: list, checks, todo: list[str] | None = None, force: bool = False,
           how: DeviceBuild = DeviceBuild()) -> dict:
    """Build, validate and gate the TensorRT engines of ``entries`` (manifest presets) inside ``bundle_dir``
    with the build's candidate pipeline (``checks``: the kit's validation set and torch logits, the profile's
    gate). Pending engines are built (all of them with ``force``; only ``todo`` presets where given). A preset
    with an INT8 candidate beside FP16 keeps INT8 only where it passes the gate and measures faster. Entries
    are updated in place; returns ``{"built": n, "failed": [...], "built_on": {...}}``."""
    from edgevit.backends.tensorrt.gpu import device_info
    from edgevit.build.pipeline import choose, discard_failed, remove_unchosen, run_candidate

    shared = [e for e in entries if _trt(e) is not None and _trt(e).engine["settings"].get("shared")]
    if shared:
        return _finish_shared(bundle_dir, shared, checks, todo, force, how)
    here = device_info()
    built, failed = 0, []
    for e in entries:
        t = _trt(e)
        if t is None or (todo and e.name not in todo):
            continue
        if t.status != PENDING and not force:
            continue
        if e.name not in checks.refs:
            raise EdgevitError(f"{VALIDATION_FILE} has no torch logits for preset {e.name}")
        spec = EngineSpec(**t.engine)
        options = [spec.settings] + list(spec.settings.get("candidates", []))
        job = device_job(bundle_dir, e.name, options, checks, how)
        results = [run_candidate(job, c) for c in _candidates(options)]
        for r in results:
            _log_engine(e.name, r, how.log)
        chosen, why = choose(results, measured=how.measure)
        discard_failed(results, bundle_dir)
        if chosen is not None:
            remove_unchosen(results, chosen, bundle_dir)
        else:
            t.status = "failed-validation"
            t.extra["device_attempts"] = [r.records[e.name] for r in results]
            t.reason = "; ".join(f"{r.id}: {r.records[e.name]['reason']}" for r in results)
            failed.append(e.name)
            continue
        _device_entry(t, spec, Choice(chosen, why, results), e.name, here)
        built += 1
    return {"built": built, "failed": failed, "built_on": here}


def _log_engine(name: str, r, log) -> None:
    rec = r.records[name]
    lat = rec.get("latency_ms")
    log(f"[engine] {name:<10} {r.id}: top-1 {100 * rec['top1']:.2f}% agree {100 * rec['agreement']:.2f}%"
        + (f" p50 {lat['p50']:.3f} ms" if lat else "") + ("" if rec["gate"]["passed"] else
                                                          f"  FAILS GATE: {rec['gate']['reason']}"))


def _device_entry(t, spec: EngineSpec, choice, preset: str, here: dict) -> None:
    """The manifest entry ``t`` (``EngineEntry``) of an engine built and passed on this device: the pipeline's
    entry, with the figures the kit was validated with kept beside it and the device's attempts as its
    candidates."""
    from edgevit.build.pipeline import entry_for

    old = t.to_dict()
    kit_validation = {k: old[k] for k in ("top1", "agreement", "mean_abs_dlogit", "max_abs_dlogit", "samples",
                                          "validated_with") if k in old}
    s = choice.chosen.spec.settings
    kit_files = ([spec.settings["onnx"]] + [o["onnx"] for o in spec.settings.get("candidates", [])]
                 + ([spec.settings["weights"]] if spec.settings.get("weights") else []))
    new_spec = EngineSpec("tensorrt", s["precision"], s["engine"], extra_files=kit_files,
                          settings={**spec.settings, **{k: v for k, v in s.items() if k not in ("candidates", "shared")},
                                    "built_on": here},
                          quantization=s.get("quantization", spec.quantization))
    entry = entry_for(choice, preset, new_spec, spec.precision, measured=True)
    t.status, t.engine, t.precision, t.chosen, t.reason = "ok", new_spec.to_dict(), s["precision"], entry.chosen, None
    t.present = tuple(k for k in t.present if k != "reason")   # a built engine has no reason to be pending
    t.top1, t.agreement, t.gate, t.latency_ms = entry.top1, entry.agreement, entry.gate, entry.latency_ms
    t.extra.update({k: v for k, v in entry.extra.items() if k in ("mean_abs_dlogit", "max_abs_dlogit", "samples",
                                                                   "predictions_sha256", "kappa", "discordant")})
    t.extra.update(validated_with=f"tensorrt {here['tensorrt']} on {here['gpu']}", kit_validation=kit_validation,
                   device_attempts=entry.candidates)


def pending_summary(entries: list) -> list[str]:
    return [e.name for e in entries if "tensorrt" in e.engines and e.engines["tensorrt"].status == PENDING]


# -- `edgevit engine build` --------------------------------------------------------------------------------

def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def engine_build(bundle, presets: list[str] | None = None, force: bool = False, any_device: bool = False,
                 how: DeviceBuild = DeviceBuild(log=_stderr)) -> dict:
    """Finish a bundle's TensorRT engines on this device and replace the bundle atomically."""
    from edgevit.bundle import BundleWriter, read_manifest, verify_files
    from edgevit.backends.tensorrt.gpu import deferred_reason, device_info, target_mismatches
    from edgevit.manifest_report import manifest_report

    bundle = Path(bundle)
    manifest = read_manifest(bundle)    # rewritten below (its TensorRT entries); commit validates it
    target = manifest.target
    if not any("tensorrt" in p.engines for p in manifest.presets):
        raise EdgevitError(f"bundle {bundle} has no TensorRT engines (target {target['name']}); "
                           f"build one with: edgevit build --target jetson-orin (or desktop-gpu)")
    known = [p.name for p in manifest.presets]
    if presets and set(presets) - set(known):
        raise EdgevitError(f"unknown preset(s) {sorted(set(presets) - set(known))}; this bundle has: {', '.join(known)}")
    why = deferred_reason()
    if why is not None:
        raise EdgevitError(f"edgevit engine build needs TensorRT and a CUDA GPU: {why}. Run it on the target "
                           f"device ({target['name']}), or use kit/build_engines.sh there")
    here = device_info()
    problems = target_mismatches(target.get("device", {}), here)
    if problems and not any_device:
        raise EdgevitError(f"this device is not the bundle's target {target['name']}: "
                           + "; ".join(problems) + ". Engines built here would only run here; pass --any-device "
                           "to build them anyway")
    if how.interval_s is None:
        how = replace(how, interval_s=manifest.request_interval_s)
    log = how.log
    todo = [p.name for p in manifest.presets if "tensorrt" in p.engines
            and (force or p.engines["tensorrt"].status == PENDING) and (not presets or p.name in presets)]
    if not todo:
        log(f"[engine] nothing to build: every TensorRT engine in {bundle} is built (use --force to rebuild)")
        return {"built": 0, "failed": [], "built_on": here}
    verify_files(bundle, manifest)
    refuse_links_out(bundle)
    checks = Checks(*read_validation(bundle), target["accuracy"])
    log(f"[engine] building {len(todo)} TensorRT engine(s) on {here['gpu']} (compute capability "
        f"{here['compute_capability']}, TensorRT {here['tensorrt']}"
        + (f", L4T {here['l4t']}" if here["l4t"] else "") + f"); validating on {len(checks.y)} images")
    with BundleWriter(bundle) as w:
        shutil.copytree(bundle, w.tmp, dirs_exist_ok=True)
        summary = finish(w.tmp, manifest.presets, checks, todo, force, how)
        record_device_build(manifest, summary, bundle_reason=None)
        w.commit(manifest, manifest_report(manifest.to_dict()))
    log(f"[engine] {bundle}: {summary['built']} engine(s) built and validated"
        + (f"; {len(summary['failed'])} failed validation: {', '.join(summary['failed'])}" if summary["failed"] else ""))
    return summary


def record_device_build(manifest, summary: dict | None, bundle_reason: str | None) -> None:
    """The manifest's (``manifest.Manifest``) ``device_build`` section, the Pareto flags and tool versions after
    (not) building."""
    from edgevit.build.selection import choose_backend
    from edgevit.build.validate import mark_pareto

    pending = pending_summary(manifest.presets)
    section = {"status": "pending" if pending else "done", "pending_presets": pending, "kit": "kit/README.md",
               "reason": bundle_reason if pending else None}
    if summary is not None:
        section.update(built_on=summary["built_on"], failed=summary["failed"],
                       when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        manifest.tools["tensorrt"] = summary["built_on"].get("tensorrt")
        if summary["built"] and not manifest.latency_measured_here:
            note = f"TensorRT engines measured on {summary['built_on'].get('gpu')} when they were built"
            if note not in (manifest.latency_note or ""):
                manifest.latency_note = f"{manifest.latency_note or 'other backends not measured'}; {note}"
    manifest.device_build = section
    for p in manifest.presets:   # built engines now run by default, in the profile's order
        backend, why = choose_backend(p.engines, manifest.backends, measured=False)
        p.default = {"backend": backend, "why": why}
    mark_pareto(manifest.presets, manifest.backend)


def defer(backend, bundle_dir: Path, entries, profile, checks: Checks, how: DeviceBuild) -> dict:
    """At the end of ``edgevit build``: write the kit and the validation set (``checks``); build the engines
    now when TensorRT and a GPU matching the target are here."""
    from edgevit.backends.tensorrt.gpu import device_info, target_mismatches

    log = how.log
    info = write_validation(bundle_dir, checks.x, checks.y, checks.refs)
    _share_kit_weights(bundle_dir, entries, backend.name, log)
    attach_profiles(bundle_dir, entries)
    reason = backend.deferred()
    if reason is None:
        problems = target_mismatches(profile.device, device_info())
        reason = ("this GPU is not the target: " + "; ".join(problems)) if problems else None
    summary = None
    if reason is None:
        log(f"[tensorrt] TensorRT and a matching GPU are here: building the engines now "
            f"(validation on {info['samples']} images)")
        kit = Checks(*read_validation(bundle_dir), profile.accuracy)
        summary = finish(bundle_dir, entries, kit, how=how)
    else:
        for e in entries:
            t = e.engines.get(backend.name)
            if t is not None and t.status == PENDING:
                t.reason = f"not built here ({reason}); run `edgevit engine build BUNDLE` on the target device"
    write_kit(bundle_dir, entries, profile.to_dict(), reason)
    return {"summary": summary, "reason": reason}


def _share_kit_weights(bundle_dir: Path, entries, name: str, log) -> None:
    """The kit's ONNX files (every preset, every candidate) with their weights stored once (``share_weights``);
    each engine lists the weights file among its files."""
    from edgevit.backends.tensorrt.kit import share_weights

    engines = [e.engines[name].engine for e in entries if name in e.engines and e.engines[name].engine is not None]
    rels = list(dict.fromkeys(s["onnx"] for spec in engines   # a shared engine's ONNX is every preset's
                              for s in [spec["settings"], *spec["settings"].get("candidates", [])]))
    if not rels:
        return
    stats = share_weights(bundle_dir, rels)
    for spec in engines:
        spec["settings"]["weights"] = stats["file"]
        spec["extra_files"] = [*spec.get("extra_files", []), stats["file"]]
    log(f"[kit] {stats['onnx_files']} ONNX files held {stats['bytes_in_onnx'] / 2 ** 20:.1f} MB of weights; "
        f"{stats['file']} stores them once: {stats['bytes_stored'] / 2 ** 20:.1f} MB")


def pending_note(manifest: dict, result: dict, bundle: Path, target: str) -> str | None:
    pending = manifest.device_build["pending_presets"]
    if not pending:
        return None
    return (f"{len(pending)} TensorRT engine(s) are {PENDING} because {result['reason']}. Copy {bundle} to the "
            f"{target} device and run there:  edgevit engine build {bundle}  (or the trtexec lines in "
            f"{bundle / 'kit' / 'build_engines.sh'}; see {bundle / 'kit' / 'README.md'}).")
