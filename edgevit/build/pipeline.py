"""One candidate pipeline: build a candidate, gate it at every preset it serves, measure it, say why.

The per-preset build (``builder.static_engines``), the shared-weight build (``build.shared``) and the
TensorRT build on the device (``backends.tensorrt.device_build``) all run ``run_candidate`` and ``choose``.
They differ only in the ``Job`` they pass in: what compiles a candidate, which runners check it (one preset,
or every preset of a shared engine) and whether its latency is measured at once (on the device, one engine
at a time) or later, in one interleaved pass over every passing candidate (the build).

A ``CandidateResult`` is typed and holds its manifest records (one per preset, made in ``_check``); the
chooser (``choose``) applies ``edgevit.build.selection``'s rule to them and ``entry_for`` makes the
manifest's ``EngineEntry``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgevit.backends.base import Candidate, EngineSpec
from edgevit.manifest import EngineEntry
from edgevit.build.selection import choose_candidate
from edgevit.build.validate import gate, validate

# What an engine entry copies from its chosen candidate's record at its preset.
FIGURES = ("top1", "agreement", "mean_abs_dlogit", "max_abs_dlogit", "samples", "predictions_sha256", "kappa",
           "discordant", "gate", "latency_ms", "inference_precision", "validated_with")


@dataclass(frozen=True)
class Checks:
    """What every candidate is checked on: the validation inputs and labels, each preset's torch FP32 logits
    on them, and the profile's accuracy gate. They travel together."""

    x: np.ndarray
    y: np.ndarray
    refs: dict
    accuracy: dict

    def torch_top1(self, preset: str) -> float:
        return float((self.refs[preset].argmax(-1) == self.y).mean())


@dataclass
class Job:
    """How one kind of build runs a candidate.

    ``build(candidate)`` -> (spec, whether it came from a cache); ``runners(spec)`` -> {preset: runner} (the
    presets the engine serves); ``notes(spec, preset)`` -> extra record fields (an engine validated on another runtime
    says which); ``measure_now``: time each runner right after it passes (the device build), each request after
    ``interval_s`` idle (the profile's request interval)."""

    checks: Checks
    build: Callable
    runners: Callable
    bundle_dir: Path
    notes: Callable = field(default=lambda spec, preset: {})
    measure_now: bool = False
    interval_s: float = 0.0
    floor_ships: bool = True      # the build's floor (FP32) ships even where it misses the gate; the device's
                                  # floor (the profile's precision, built by TensorRT) does not


@dataclass
class CandidateResult:
    """One candidate after the pipeline: built (``spec``), gated at each of its presets (``records``, the
    manifest's candidate records), measured (their ``latency_ms``), or skipped with why."""

    candidate: Candidate
    spec: EngineSpec | None = None
    records: dict = field(default_factory=dict)    # preset -> manifest candidate record
    passed: bool = False
    skipped: bool = False
    reason: str = ""
    skipped_as: str = ""          # a skipped candidate's one-word verdict for the log: skipped, not tried, not built
    cached: bool = False
    seconds: float = 0.0

    @classmethod
    def skip(cls, candidate: Candidate, why: str, presets, verdict: str = "skipped") -> "CandidateResult":
        rec = {**candidate.record(), "passed": False, "skipped": True, "reason": why, "latency_ms": None}
        return cls(candidate, records={p: dict(rec) for p in presets}, skipped=True, reason=why, skipped_as=verdict)

    @property
    def id(self) -> str:
        return self.candidate.id

    @property
    def runs_here(self) -> bool:
        return self.spec is not None and self.spec.status == "ok"

    def failing(self) -> list[str]:
        return [p for p, r in self.records.items() if not r.get("skipped") and not r["gate"]["passed"]]

    def latency(self) -> dict | None:
        """The candidate's latency over its presets (``over_presets``)."""
        return over_presets([r.get("latency_ms") for r in self.records.values()])


def geomean(values) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def over_presets(lats: list) -> dict | None:
    """One latency record for an engine serving several presets: the one preset's record, or the geometric
    mean of the p50s and of each round (every preset measured in the same pass). None unless every preset
    was measured."""
    if not lats or not all(lats):
        return None
    if len(lats) == 1:
        return lats[0]
    out = {"p50": geomean(lat["p50"] for lat in lats), "over": f"geometric mean over {len(lats)} presets"}
    if all(lat.get("rounds") for lat in lats):   # timed in one interleaved pass (not one runner at a time)
        out["rounds"] = [geomean(r) for r in zip(*(lat["rounds"] for lat in lats))]
    return out


def run_candidate(job: Job, candidate: Candidate, log=None) -> CandidateResult:
    """Build ``candidate``, check it at every preset the engine serves and gate it: it passes only where every
    preset passes (one engine serves them all), or where it is the floor, which ships regardless. A failed
    candidate's files stay until ``discard_failed`` (a probe may still time it). ``log``: a line per candidate
    with several presets."""
    t0 = time.perf_counter()
    spec, cached = job.build(candidate)
    result = CandidateResult(candidate, spec, cached=cached)
    runners = job.runners(spec)
    try:
        for preset, runner in runners.items():
            result.records[preset] = _check(job, candidate, preset, runner)
    finally:
        for runner in runners.values():
            runner.close()
    result.seconds = round(time.perf_counter() - t0, 2)
    failing = result.failing()
    result.passed = (candidate.floor and job.floor_ships) or not failing
    for preset, rec in result.records.items():
        _finish_record(rec, result, failing, job.notes(spec, preset))
    if log is not None and len(runners) > 1:
        log(f"[shared] {spec.backend} {candidate.id}: " + ("passes at every preset" if not failing else
                                                           f"fails the gate at {', '.join(failing)}")
            + f" ({result.seconds:.1f} s{', cached' if cached else ''})")
    return result


def _check(job: Job, candidate: Candidate, preset: str, runner) -> dict:
    from edgevit.measure import measure_latency

    checks = job.checks
    v = validate(runner, checks.x, checks.y, checks.refs[preset])
    g = gate(v, checks.torch_top1(preset), checks.accuracy)
    rec = {**candidate.record(), "passed": g.passed, "reason": g.reason, "gate": g.to_dict(), "latency_ms": None,
           **v.to_dict()}
    precision = getattr(runner, "inference_precision", None)
    if precision:
        rec["inference_precision"] = precision
    if job.measure_now and (candidate.floor or g.passed):
        rec["latency_ms"] = measure_latency(runner, checks.x, interval_s=job.interval_s)
    return rec


def _finish_record(rec: dict, result: CandidateResult, failing: list[str], notes: dict) -> None:
    """A record's verdict is the candidate's: one engine passes or fails for all its presets."""
    if result.passed and failing and not rec["gate"]["passed"]:
        rec["reason"] = f"the floor ships regardless ({rec['reason']})"
    elif not result.passed and rec["gate"]["passed"]:
        rec["reason"] = f"fails the gate at {', '.join(failing)}"
    rec.update(passed=result.passed, cached=result.cached, seconds=result.seconds, **notes)


def discard_failed(results: list[CandidateResult], bundle_dir: Path) -> None:
    """A failed candidate does not ship: its files leave the bundle."""
    for r in results:
        if r.spec is not None and not r.passed:
            for rel in r.spec.files:
                (Path(bundle_dir) / rel).unlink(missing_ok=True)


def choose(results: list[CandidateResult], measured: bool) -> tuple[CandidateResult | None, str]:
    """The result to ship (``edgevit.build.selection``'s rule: the fastest passing candidate faster than the floor
    beyond the noise) and why. One preset's records are what the rule marks (``vs_floor``); an engine serving
    several presets is judged on its latency over all of them."""
    single = all(len(r.records) == 1 for r in results)
    views = [next(iter(r.records.values())) if single else
             {**r.candidate.record(), "passed": r.passed, "skipped": r.skipped, "latency_ms": r.latency()}
             for r in results]
    pick, why = choose_candidate(views, measured)
    return (None if pick is None else results[views.index(pick)]), why


def remove_unchosen(results: list[CandidateResult], chosen: CandidateResult, bundle_dir: Path) -> None:
    """Delete from the bundle the files of every built candidate but ``chosen`` (those it shares stay)."""
    keep = set(chosen.spec.files)
    for r in results:
        if r is not chosen and r.spec is not None:
            for rel in r.spec.files:
                if rel not in keep:
                    (Path(bundle_dir) / rel).unlink(missing_ok=True)


def measure_results(jobs: dict, sample: np.ndarray, interval_s: float = 0.0) -> int:
    """Latency of every passing, locally runnable candidate of ``jobs`` (key -> (loader, results)), in one
    interleaved pass, each request after ``interval_s`` idle (the profile's request interval):
    ``loader(result, preset)`` gives a runner. Writes each record's ``latency_ms``."""
    from edgevit.measure import measure_into_records

    loads = {}
    for key, (loader, results) in jobs.items():
        for r in results:
            if r.passed and r.runs_here:
                for preset, rec in r.records.items():
                    loads[f"{key}/{r.id}/{preset}"] = (lambda r=r, p=preset, ld=loader: ld(r, p), rec)
    return measure_into_records(loads, sample, interval_s=interval_s)


@dataclass(frozen=True)
class Choice:
    """What ``choose`` picked among ``results``, and why."""

    chosen: CandidateResult
    why: str
    results: list


def entry_for(choice: Choice, preset: str, spec: EngineSpec, preferred: str, measured: bool) -> EngineEntry:
    """The manifest entry of ``preset`` on one backend: the chosen engine (``spec``: a shared engine's carries
    the preset's binding), its figures at this preset, why, and every candidate considered."""
    chosen, why = choice.chosen, choice.why
    mine = chosen.records[preset]
    c = chosen.candidate
    label = {"id": c.id, "precision": c.precision, "recipe": c.recipe, "why": why}
    extra = {k: mine[k] for k in FIGURES if k in mine and k not in ("top1", "agreement", "gate", "latency_ms")}
    if "shared" in spec.settings:
        extra["shared"] = True
    if not measured:
        extra["latency_note"] = "not measured here"
    reason = None
    if spec.status != "ok":
        reason = "the engine is built on the target device: `edgevit engine build BUNDLE`"
        extra["candidates_on_device"] = mine.get("device_candidates", [])
    fallback = ({"from": preferred, "to": c.precision, "reason": why} if c.precision != preferred else None)
    return EngineEntry(status=spec.status, engine=spec.to_dict(), precision=c.precision, recipe=c.recipe,
                       top1=mine["top1"], agreement=mine["agreement"], gate=mine["gate"],
                       latency_ms=mine.get("latency_ms"), chosen=label,
                       candidates=[r.records[preset] for r in choice.results], fallback=fallback, reason=reason,
                       extra=extra, present=("status", "engine", "precision", "recipe", "top1", "agreement",
                                             "gate", "latency_ms", "chosen", "candidates", "fallback"))
