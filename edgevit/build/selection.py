"""Choosing what ships: the fastest candidate that passes the gate, per preset and backend, then per preset
across backends.

Precision is a preference, not a command. A reduced-precision candidate (INT8, BF16) replaces the floor
(FP32; FP16 on TensorRT) only where it passed the accuracy gate and measured faster than the floor beyond
the noise, in the same interleaved pass: its median is at least ``MIN_GAIN`` lower, and it was faster in
at least ``MIN_ROUND_SHARE`` of the rounds, each round timing every engine back to back. Where latencies
were not measured here (the build host is not the target), the profile's preference order decides.

Records are the manifest's candidate dicts: ``precision``, ``recipe``, ``passed``, ``floor``,
``latency_ms`` (``p50`` and per-round medians ``rounds``), so the rule can be tested with made-up figures.
"""

from __future__ import annotations

from edgevit.manifest import PENDING

MIN_GAIN = 0.01            # the median must be at least 1 % lower ...
MIN_ROUND_SHARE = 0.8      # ... and lower in 4 of 5 rounds: a tie wins that by chance 6 times in 32 at most


def faster_beyond_noise(lat: dict | None, ref: dict | None) -> tuple[bool, str]:
    """Whether latency record ``lat`` beats ``ref`` beyond the run-to-run noise, and the figures that say so."""
    if not lat or not ref:
        return False, "not measured"
    ratio = lat["p50"] / ref["p50"]
    rounds = list(zip(lat.get("rounds") or [], ref.get("rounds") or []))
    wins = sum(a < b for a, b in rounds)
    share = wins / len(rounds) if rounds else (1.0 if ratio < 1 else 0.0)
    ok = ratio <= 1 - MIN_GAIN and share >= MIN_ROUND_SHARE
    return ok, f"p50 {ratio:.2f}x, faster in {wins}/{len(rounds)} rounds" if rounds else f"p50 {ratio:.2f}x"


def _floor(cands: list[dict]) -> dict | None:
    return next((c for c in cands if c.get("floor") and c.get("passed")), None)


def choose_candidate(cands: list[dict], measured: bool) -> tuple[dict | None, str]:
    """The candidate to ship among ``cands`` (in the profile's preference order) and why."""
    passing = [c for c in cands if c.get("passed")]
    if not passing:
        return None, "no candidate passed the gate"
    floor = _floor(cands)
    label = lambda c: f"{c['precision']} ({c['recipe']})"  # noqa: E731
    if not measured or floor is None or not floor.get("latency_ms"):
        first = passing[0]
        why = ("latency not measured here: the first passing candidate in the profile's preference order"
               if not measured or (floor and not floor.get("latency_ms")) else "the only passing candidates")
        return first, why
    faster = []
    for c in passing:
        if c is floor:
            continue
        ok, figures = faster_beyond_noise(c.get("latency_ms"), floor["latency_ms"])
        c["vs_floor"] = figures
        if ok:
            faster.append(c)
    if not faster:
        failed = [c for c in cands if not c.get("passed") and not c.get("skipped")]
        others = [f"{label(c)} {c['vs_floor']}" for c in passing if c is not floor]
        return floor, (f"no reduced precision beat {floor['precision']} beyond the noise"
                       + (f" ({'; '.join(others)})" if others else "")
                       + (f"; failed the gate: {', '.join(label(c) for c in failed)}" if failed else ""))
    best = min(faster, key=lambda c: c["latency_ms"]["p50"])
    return best, f"fastest passing candidate: {best['vs_floor']} against {floor['precision']}"


def choose_backend(engines: dict, order: list[str], measured: bool) -> tuple[str | None, str]:
    """The backend whose chosen engine runs a preset by default (``engines``: backend -> ``EngineEntry``): the
    primary unless another backend's engine is faster beyond the noise (fewer libraries loaded on a tie)."""
    present = [b for b in order if b in engines and engines[b].status != "unavailable"]
    usable = [b for b in present if engines[b].status == "ok"]
    if not measured and present and engines[present[0]].status in ("ok", PENDING):
        # Not measured here: the profile's order decides, a primary still to be built on the device included
        # (loading it then says so and how to finish it, rather than silently running something else).
        return present[0], "the profile's primary backend (latency not measured here)"
    if not usable:
        return (present[0] if present else None), "no engine of this preset is built yet"
    primary = usable[0]
    if not measured or not engines[primary].latency_ms:
        return primary, "the profile's first backend with a built engine (latency not measured here)"
    best, why = primary, "the primary backend; no other was faster beyond the noise"
    for b in usable[1:]:
        ok, figures = faster_beyond_noise(engines[b].latency_ms, engines[best].latency_ms)
        if ok:
            best, why = b, f"faster than {primary}: {figures}" if best == primary else f"faster than {best}: {figures}"
    return best, why
