"""Policies: from signals to the most expensive preset allowed now.

A policy sees the *ladder*, the candidate presets ordered cheapest first (the accuracy/latency Pareto front
of the bundle), and returns an index into it with a reason. Hysteresis lives in the policies (a level is
left for a better one only when the signal clears the threshold by a margin); the minimum dwell time and
signal debouncing live in the ``Switcher``, so every policy gets them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgevit.errors import EdgevitError
from edgevit.files import excerpt


@dataclass
class Proposal:
    """``index`` into the ladder, or ``None`` to abstain (the policy's signal is missing: no opinion)."""

    index: int | None
    reason: str


def _level_index(level: int, levels: int, n: int) -> int:
    """Level 0 (unconstrained) -> the most expensive candidate; the last level -> the cheapest."""
    if n <= 1 or levels == 0:
        return n - 1
    return round((n - 1) * (1 - level / levels))


class Policy:
    name = "policy"

    def signals(self) -> set[str]:
        """The signal names this policy reads (``edgevit.runtime.signals.SIGNALS``)."""
        return set()

    def propose(self, signals: dict, ladder: list, current: int) -> Proposal:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class FixedPolicy(Policy):
    name = "fixed"

    def __init__(self, preset: str | None = None):
        self.preset = preset

    def propose(self, signals, ladder, current):
        names = [p.name for p in ladder]
        if self.preset is None:
            return Proposal(len(ladder) - 1, "fixed: the most accurate preset")
        if self.preset not in names:
            raise EdgevitError(f"policy fixed: preset {excerpt(self.preset)} is not on this backend's accuracy/latency "
                               f"Pareto front; candidates: {', '.join(names)} (to pin any preset without a "
                               f"switcher, call rt.use({excerpt(self.preset)}))")
        return Proposal(names.index(self.preset), f"fixed: {self.preset}")


class ThresholdPolicy(Policy):
    """A signal mapped through thresholds to levels, with hysteresis on the way back."""

    signal = ""
    unit = ""
    higher_is_worse = True

    def __init__(self, thresholds: list[float], hysteresis: float):
        from edgevit.runtime.signals import SIGNALS

        if self.signal not in SIGNALS:   # a misspelt signal would read as "unavailable" forever
            raise EdgevitError(f"policy {self.name}: unknown signal {excerpt(self.signal)}; known signals: {', '.join(SIGNALS)}")
        if not thresholds:
            raise EdgevitError(f"policy {self.name}: thresholds must not be empty")
        if hysteresis < 0:
            raise EdgevitError(f"policy {self.name}: hysteresis {hysteresis} must be >= 0")
        self.thresholds = sorted(float(t) for t in thresholds)
        self.hysteresis = float(hysteresis)
        self.level = 0

    def signals(self) -> set[str]:
        return {self.signal}

    def _crossed(self, value: float, margin: float) -> int:
        if self.higher_is_worse:
            return sum(value >= t - margin for t in self.thresholds)
        return sum(value <= t + margin for t in self.thresholds)

    def update_level(self, value: float) -> int:
        raw = self._crossed(value, 0.0)
        if raw > self.level:
            self.level = raw                        # worse: at once
        elif raw < self.level:
            # Better: only as far as the value clears the thresholds by the margin; never worse than before.
            self.level = min(self.level, max(raw, self._crossed(value, self.hysteresis)))
        return self.level

    def propose(self, signals, ladder, current):
        value = signals.get(self.signal)
        if value is None or value != value:  # missing or NaN: no opinion
            return Proposal(None, f"{self.signal} unavailable")
        level = self.update_level(float(value))
        idx = _level_index(level, len(self.thresholds), len(ladder))
        bound = [t for t in (self.thresholds if self.higher_is_worse else self.thresholds[::-1])]
        return Proposal(idx, f"{self.signal} {value:.1f}{self.unit}: level {level}/{len(bound)} "
                             f"(thresholds {', '.join(f'{t:g}' for t in bound)})")


class BatteryPolicy(ThresholdPolicy):
    """Battery below each threshold allows one step cheaper; charging lifts every limit."""

    name = "battery"
    signal = "battery_pct"
    unit = "%"
    higher_is_worse = False

    def __init__(self, thresholds=(80, 50, 20), hysteresis_pct: float = 5):
        super().__init__(list(thresholds), hysteresis_pct)
        for t in self.thresholds:
            if not 0 <= t <= 100:
                raise EdgevitError(f"policy battery: threshold {t} is outside 0..100")

    def propose(self, signals, ladder, current):
        if signals.get("charging"):
            self.level = 0
            return Proposal(len(ladder) - 1, "charging: no battery limit")
        return super().propose(signals, ladder, current)


class ThermalPolicy(ThresholdPolicy):
    """Steps down at limit-10, limit-5 and limit degrees C."""

    name = "thermal"
    signal = "temperature_c"
    unit = " C"
    higher_is_worse = True

    def __init__(self, limit_c: float = 85, hysteresis_c: float = 3):
        super().__init__([limit_c - 10, limit_c - 5, limit_c], hysteresis_c)


class LatencyPolicy(Policy):
    """The most accurate candidate whose recent p90 meets ``deadline * margin``; one step down per queued
    request above ``queue_limit``. Live p90s come from the runtime; the manifest's build-host p90s seed them (p50 in older bundles)."""

    name = "latency"

    def __init__(self, deadline_ms: float, margin: float = 0.8, queue_limit: int = 2, hysteresis_pct: float = 5):
        if deadline_ms is None or deadline_ms <= 0:
            raise EdgevitError(f"policy latency: deadline_ms must be > 0, got {excerpt(deadline_ms)}")
        if not 0 < margin <= 1:
            raise EdgevitError(f"policy latency: margin {margin} must be in (0, 1]")
        if queue_limit < 0:
            raise EdgevitError(f"policy latency: queue_limit {queue_limit} must be >= 0")
        self.deadline_ms, self.margin, self.queue_limit = float(deadline_ms), float(margin), int(queue_limit)
        self.hysteresis = hysteresis_pct / 100.0

    def signals(self) -> set[str]:
        return {"latency_p90_ms", "queue_depth"}

    def propose(self, signals, ladder, current):
        live = signals.get("latency_p90_ms") or {}
        budget = self.deadline_ms * self.margin
        best, p90s = None, []
        for i, p in enumerate(ladder):
            p90 = live.get(p.name, p.latency_p90_ms or p.latency_ms)  # seeded from the build's p90
            p90s.append(p90)
            if p90 is None:
                continue
            limit = budget * (1 - self.hysteresis) if i > current else budget   # moving up needs headroom
            if p90 <= limit:
                best = i
        if best is None:
            known = [x for x in p90s if x is not None]
            if not known:
                return Proposal(None, "no latency measurements yet")
            best, why = 0, f"no preset meets {budget:.2f} ms: cheapest"
        else:
            why = f"p90 {p90s[best]:.2f} ms <= {budget:.2f} ms (deadline {self.deadline_ms:g} x {self.margin:g})"
        if best < current < len(p90s) and p90s[current] is not None:
            # The measurement that forces the move: the current preset's own p90.
            src = "measured" if ladder[current].name in live else "build-host"
            why = f"{ladder[current].name} {src} p90 {p90s[current]:.2f} ms > {budget:.2f} ms budget; " + why
        queue = int(signals.get("queue_depth") or 0)
        if queue > self.queue_limit:
            best = max(0, best - (queue - self.queue_limit))
            why += f"; queue {queue} > {self.queue_limit}: {queue - self.queue_limit} step(s) down"
        return Proposal(best, why)


class CompositePolicy(Policy):
    """The most restrictive member wins."""

    name = "composite"

    def __init__(self, policies: list[Policy]):
        if not policies:
            raise EdgevitError("policy composite: needs at least one member policy")
        self.policies = policies

    def signals(self) -> set[str]:
        return set().union(*(p.signals() for p in self.policies))

    def propose(self, signals, ladder, current):
        proposals = [(p, p.propose(signals, ladder, current)) for p in self.policies]
        voting = [(p, q) for p, q in proposals if q.index is not None]   # members without their signal abstain
        if not voting:
            return Proposal(None, "; ".join(f"{p.name}: {q.reason}" for p, q in proposals))
        pol, prop = min(voting, key=lambda x: x[1].index)
        return Proposal(prop.index, f"{pol.name}: {prop.reason}")

    def describe(self) -> str:
        return "composite(" + ", ".join(p.describe() for p in self.policies) + ")"


POLICY_KEYS = {
    "fixed": {"preset"},
    "battery": {"thresholds", "hysteresis_pct"},
    "thermal": {"limit_c", "hysteresis_c"},
    "latency": {"deadline_ms", "margin", "queue_limit", "hysteresis_pct"},
    "composite": {"members"},
}
SWITCHER_KEYS = {"min_dwell_s", "interval_s", "debounce"}


def build_policy(spec: dict, where: str = "policy") -> Policy:
    """A policy from a mapping such as ``{policy: battery, thresholds: [80, 50, 20], hysteresis_pct: 5}``."""
    if not isinstance(spec, dict) or "policy" not in spec:
        raise EdgevitError(f"{where}: expected a mapping with a 'policy' key ({', '.join(POLICY_KEYS)})")
    kind = spec["policy"]
    if kind not in POLICY_KEYS:
        raise EdgevitError(f"{where}.policy: {excerpt(kind)} is not one of {', '.join(POLICY_KEYS)}")
    params = {k: v for k, v in spec.items() if k != "policy" and k not in SWITCHER_KEYS}
    unknown = set(params) - POLICY_KEYS[kind]
    if unknown:
        raise EdgevitError(f"{where}: unknown key {excerpt(sorted(unknown)[0])} for policy {kind}; allowed: "
                           f"{', '.join(sorted(POLICY_KEYS[kind] | SWITCHER_KEYS))}")
    for k, v in params.items():
        if k in ("thresholds",):
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise EdgevitError(f"{where}.{k}: expected a list of numbers, got {excerpt(v)}")
        elif k in ("hysteresis_pct", "limit_c", "hysteresis_c", "deadline_ms", "margin", "queue_limit"):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise EdgevitError(f"{where}.{k}: expected a number, got {excerpt(v)}")
    if kind == "latency" and "deadline_ms" not in params:
        raise EdgevitError(f"{where}.deadline_ms: required for policy latency")
    constructors = {"fixed": lambda: FixedPolicy(params.get("preset")), "battery": lambda: BatteryPolicy(**params),
                    "thermal": lambda: ThermalPolicy(**params), "latency": lambda: LatencyPolicy(**params)}
    if kind in constructors:
        try:
            return constructors[kind]()
        except EdgevitError as e:  # the constructors know the field, the caller knows the file
            raise EdgevitError(f"{where}: {e}") from None
    members = params.get("members")
    if not isinstance(members, list) or not members:
        raise EdgevitError(f"{where}.members: expected a list of policy mappings")
    return CompositePolicy([build_policy(m, f"{where}.members[{i}]") for i, m in enumerate(members)])


def policy_from_profile(name: str, runtime_section: dict) -> Policy:
    """The named policy with its parameters from a profile's ``runtime:`` section."""
    r = runtime_section
    battery = {"policy": "battery", "thresholds": list(r.get("battery_thresholds", [80, 50, 20])),
               "hysteresis_pct": r.get("hysteresis_pct", 5)}
    thermal = {"policy": "thermal", "limit_c": r.get("thermal_limit_c", 85)}
    deadline = r.get("latency_deadline_ms")
    latency = {"policy": "latency", "deadline_ms": deadline}
    # A deadline is the application's to state: without one the composite leaves the latency member out.
    members = [battery, thermal] + ([latency] if deadline else [])
    specs = {"battery": battery, "thermal": thermal, "latency": latency, "fixed": {"policy": "fixed"},
             "composite": {"policy": "composite", "members": members}}
    if name not in specs:
        raise EdgevitError(f"unknown policy {name!r}; expected one of {', '.join(specs)} or a policy .yaml file")
    if name == "latency" and not deadline:
        raise EdgevitError("policy latency: the profile's runtime.latency_deadline_ms is not set; set it, or pass a "
                           "policy file with deadline_ms")
    return build_policy(specs[name], f"profile runtime ({name})")
