"""The device's memory budget for resident presets (``runtime.memory_budget_mb``): each preset's default engine
is the fastest passing one whose whole set fits.

The speed rule picks each preset's default backend first (``build.selection.choose_backend``). Where the
set those defaults make holds more than the budget, presets move, one at a time, to the engine that saves
memory at the smallest latency cost per MB saved, until the set fits or nothing saves more. A shared engine
(``--shared-weights``) holds its memory while any preset runs on it, so the moves are planned within every
subset of the backends, and the fitting plan with the least summed p50 wins. What an engine
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
    """One preset's engine on one backend: its p50 and the resident MB it adds; for a shared engine
    (``shared``), the MB of the whole engine, which every preset on it shares."""

    backend: str
    p50: float
    mb: float
    shared: bool = False


def set_mb(options: dict[str, list[Option]], choice: dict[str, str]) -> float:
    """MB the engines of ``choice`` (preset -> backend) hold: a shared engine once however many presets run
    on it, a per-preset engine each."""
    total, engines = 0.0, set()
    for preset, backend in choice.items():
        o = next(o for o in options[preset] if o.backend == backend)
        if not o.shared:
            total += o.mb
        elif backend not in engines:
            engines.add(backend)
            total += o.mb
    return total


def _greedy(options: dict[str, list[Option]], start: dict[str, str], budget_mb: float) -> dict[str, str]:
    """From ``start``, the moves that save the most MB per ms lost until the set fits or none saves more."""
    choice = dict(start)
    total = set_mb(options, choice)
    while total > budget_mb:
        best = None
        for preset, opts in options.items():
            here = next(o for o in opts if o.backend == choice[preset])
            for o in opts:
                after = set_mb(options, {**choice, preset: o.backend})
                saved = total - after
                if saved <= 0:
                    continue
                cost = max(o.p50 - here.p50, 0.0) / saved
                if best is None or cost < best[0]:
                    best = (cost, preset, o.backend, after)
        if best is None:
            break
        _, preset, backend, total = best
        choice[preset] = backend
    return choice


def fit(options: dict[str, list[Option]], current: dict[str, str], budget_mb: float) -> tuple[dict[str, str], float]:
    """(preset -> backend, estimated MB): ``current`` (the fastest defaults) where it fits; else, of the sets
    that fit, the one with the least summed p50; the smallest set where none fits.

    A shared engine's memory goes only when no preset runs on it any more, which one preset's move never
    shows, so every subset of the backends is tried as the ones allowed, and within it presets move one at a
    time at the least latency per MB saved."""
    from itertools import combinations

    now = set_mb(options, current)
    if now <= budget_mb:
        return dict(current), now
    backends = sorted({o.backend for opts in options.values() for o in opts})
    tried = []
    for n in range(len(backends), 0, -1):
        for allowed in combinations(backends, n):
            within = {p: [o for o in opts if o.backend in allowed] for p, opts in options.items()}
            if not all(within.values()):
                continue
            start = {p: current[p] if current[p] in allowed else min(within[p], key=lambda o: o.p50).backend
                     for p in options}
            choice = _greedy(within, start, budget_mb)
            mb = set_mb(options, choice)
            tried.append((mb > budget_mb, mb if mb > budget_mb else 0.0,
                          sum(next(o.p50 for o in options[p] if o.backend == b) for p, b in choice.items()), mb,
                          choice))
    _, _, _, mb, choice = min(tried, key=lambda t: t[:4])
    return choice, mb


def within_budget(results: list, chosen, why: str, budget_mb: float, mb_of, log) -> tuple[object, str]:
    """(result, why): a shared build's engine on one backend under the memory budget. ``chosen`` (the speed
    rule's pick among ``results``) where its engine fits with every preset resident; else the fastest
    passing candidate that fits; where none fits, the smallest, if smaller than ``chosen``. A backend's
    shared candidates differ in memory, not only in speed (OpenVINO's branches engine holds 2.5x one preset's
    engine, its one dynamic-shape graph 1.4x), so the budget chooses among them before it chooses among
    backends (``fit``). ``mb_of(result)``: MB of the engine with every preset resident (a fresh process), or
    None where it could not be measured; each figure goes into the candidate's records (``resident_mb``)."""
    def mb(r) -> float | None:
        recs = list(r.records.values())
        if "resident_mb" not in recs[0]:
            got = mb_of(r)
            for rec in recs:
                rec["resident_mb"] = None if got is None else round(got, 1)
        return recs[0]["resident_mb"]

    first = None if chosen is None else mb(chosen)
    if first is None or first <= budget_mb:
        return chosen, why
    others = sorted((r for r in results if r is not chosen and r.passed and r.runs_here and r.latency()),
                    key=lambda r: r.latency()["p50"])
    sizes = []
    for r in others:
        got = mb(r)
        if got is not None and got <= budget_mb:
            log(f"[memory] budget {budget_mb:g} MB: {r.spec.backend} {r.id} ({got:.1f} MB with every preset resident) "
                f"instead of {chosen.id} ({first:.1f} MB)")
            return r, (f"within the memory budget ({budget_mb:g} MB): {got:.1f} MB with every preset resident, p50 "
                       f"{r.latency()['p50']:.3f} ms; the fastest, {chosen.id}, holds {first:.1f} MB ({why})")
        if got is not None:
            sizes.append((got, r))
    got, smallest = min(sizes, key=lambda t: t[0], default=(None, None))
    if smallest is not None and got < first:
        return smallest, (f"no candidate fits the memory budget ({budget_mb:g} MB): the smallest, {got:.1f} MB with "
                          f"every preset resident; the fastest, {chosen.id}, holds {first:.1f} MB")
    return chosen, why


def options_of(entries: list) -> dict[str, list[Option]]:
    """Per preset, every backend engine that is built, measured and has a resident figure."""
    out = {}
    for e in entries:
        out[e.name] = [Option(b, eng.latency("p50"), eng.resident_mb["all_presets" if _shared(eng) else "added"],
                              _shared(eng))
                       for b, eng in e.engines.items()
                       if eng.ok and eng.latency("p50") is not None and eng.resident_mb]
    return out


def _mb(o: Option) -> str:
    return f"{o.mb:.1f} MB" + (" (its shared engine, every preset)" if o.shared else "")


def _shared(eng) -> bool:
    return bool(eng.extra.get("shared", False))


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
                                f"{_mb(now)}; {was.backend} p50 {was.p50:.3f} ms, {_mb(was)}"}
    fits = (measured if measured is not None else estimate) <= budget
    memory["budget"] = {"mb": float(budget), "default_set_mb": None if measured is None else round(measured, 1),
                        "estimate_mb": round(estimate, 1), "fits": fits, "moved": moved}
    plan.opts.log(f"[memory] budget {budget:g} MB: the default engines hold "
                  + (f"{measured:.1f} MB" if measured is not None else f"about {estimate:.1f} MB")
                  + (" (fits)" if fits else " (over the budget: no engine set built here fits it)")
                  + (f"; moved {', '.join(f'{p} {m}' for p, m in moved.items())}" if moved else "; nothing moved"))
    return memory
