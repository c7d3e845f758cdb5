"""The device's memory budget for resident presets (``runtime.memory_budget_mb``): each preset's default engine
is the fastest passing one whose whole set fits.

The speed rule picks each preset's default backend first (``build.selection.choose_backend``). Where the
set those defaults make holds more than the budget, presets move, one at a time, to the engine that saves
memory at the smallest latency cost per MB saved, until the set fits or nothing saves more. What an engine
holds is what loading it added to its backend's set in a fresh process (``build.memory``), so the plan is
an estimate; the set of defaults it arrives at is then measured the same way, per backend, and the
manifest records that figure and whether it fits. On the 2-core AVX-512 host, SuperViT-DeiT-S's OpenVINO
INT8 engines hold about 105 MB a preset and ONNX Runtime's dynamic INT8 engines about 36 MB, at 1.1-1.3x
the latency: a budget moves the cheapest presets first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgevit.backends.base import EngineSpec
from edgevit.errors import EdgevitError


@dataclass(frozen=True)
class Option:
    """One preset's engine on one backend: its p50 and the resident MB it adds."""

    backend: str
    p50: float
    mb: float


def fit(options: dict[str, list[Option]], current: dict[str, str], budget_mb: float) -> tuple[dict[str, str], float]:
    """(preset -> backend, estimated MB): from ``current`` (the fastest defaults), the moves that bring the
    set under ``budget_mb`` at the least latency per MB saved; the smallest reachable set where none fits."""
    choice = dict(current)

    def mb_of(preset: str) -> float:
        return next(o.mb for o in options[preset] if o.backend == choice[preset])

    total = sum(mb_of(p) for p in choice)
    while total > budget_mb:
        best = None
        for preset, opts in options.items():
            here = next(o for o in opts if o.backend == choice[preset])
            for o in opts:
                saved = here.mb - o.mb
                if saved <= 0:
                    continue
                cost = max(o.p50 - here.p50, 0.0) / saved
                if best is None or cost < best[0]:
                    best = (cost, preset, o.backend, saved)
        if best is None:
            break
        _, preset, backend, saved = best
        choice[preset] = backend
        total -= saved
    return choice, total


def options_of(entries: list) -> dict[str, list[Option]]:
    """Per preset, every backend engine that is built, measured and has a resident figure."""
    out = {}
    for e in entries:
        out[e.name] = [Option(b, eng.latency("p50"), eng.resident_mb["added"]) for b, eng in e.engines.items()
                       if eng.ok and eng.latency("p50") is not None and eng.resident_mb]
    return out


def _measure_set(plan, entries: list, choice: dict, bundle_dir: Path) -> float | None:
    """MB the engines of ``choice`` (preset -> backend) hold, each backend's in a fresh process."""
    from edgevit.build import resident

    total = 0.0
    try:
        for b in sorted(set(choice.values())):
            specs = {e.name: EngineSpec(**e.engines[b].engine) for e in entries if choice[e.name] == b}
            total += resident.measure(bundle_dir, b, specs).total_mb
    except EdgevitError as err:
        plan.opts.log(f"[memory] the default set under the budget was not measured: {err}")
        return None
    return total


def apply(plan, entries: list, memory: dict | None, bundle_dir: Path) -> dict | None:
    """Move presets' defaults until their engines fit the profile's budget; record the measured set in
    ``memory["budget"]``. Nothing to do without a budget, or where memory was not measured here."""
    budget = plan.profile.runtime.get("memory_budget_mb")
    if budget is None or memory is None:
        return memory
    options = options_of(entries)
    current = {e.name: e.default_backend() for e in entries}
    if any(not any(o.backend == current[p] for o in options[p]) for p in current):
        plan.opts.log(f"[memory] budget {budget:g} MB: not applied, a default engine has no resident figure")
        return memory
    # The estimate leaves out what a backend's first engine costs once: where the measured set overshoots,
    # plan again against the budget less the overshoot (a set split over two backends pays it twice).
    target, measured = float(budget), None
    for _ in range(3):
        choice, estimate = fit(options, current, target)
        measured = _measure_set(plan, entries, choice, bundle_dir)
        if measured is None or measured <= budget or estimate > target:
            break
        target -= measured - budget
    moved = {p: f"{current[p]} -> {b}" for p, b in choice.items() if b != current[p]}
    for e in entries:
        if e.name in moved:
            was = next(o for o in options[e.name] if o.backend == current[e.name])
            now = next(o for o in options[e.name] if o.backend == choice[e.name])
            e.default = {"backend": choice[e.name],
                         "why": f"within the memory budget ({budget:g} MB): {now.backend} p50 {now.p50:.3f} ms, "
                                f"{now.mb:.1f} MB; {was.backend} p50 {was.p50:.3f} ms, {was.mb:.1f} MB"}
    fits = (measured if measured is not None else estimate) <= budget
    memory["budget"] = {"mb": float(budget), "default_set_mb": None if measured is None else round(measured, 1),
                        "estimate_mb": round(estimate, 1), "fits": fits, "moved": moved}
    plan.opts.log(f"[memory] budget {budget:g} MB: the default engines hold "
                  + (f"{measured:.1f} MB" if measured is not None else f"about {estimate:.1f} MB")
                  + (" (fits)" if fits else " (over the budget: no engine set built here fits it)")
                  + (f"; moved {', '.join(f'{p} {m}' for p, m in moved.items())}" if moved else "; nothing moved"))
    return memory
