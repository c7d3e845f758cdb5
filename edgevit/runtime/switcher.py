"""The switcher: reads signals, asks a policy, and moves the runtime between presets.

Signals are debounced (the median of the last ``debounce`` readings of each numeric signal, the majority of
the last ``debounce`` for flags such as charging), a move to a
costlier preset happens only after ``min_dwell_s`` on the current one (a move down, for heat or a flat battery,
is never delayed), and every switch is logged with its reason and passed to the callbacks. ``tick()`` is one decision; ``start()`` runs ticks on a background thread every
``interval_s``. Switching is ``Runtime.use``: a reference swap, so requests in flight finish where they began.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable

from edgevit.errors import EdgevitError
from edgevit.runtime.policies import Policy

log = logging.getLogger("edgevit.switcher")


@dataclass
class SwitchEvent:
    time: float
    from_preset: str
    to_preset: str
    reason: str
    signals: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"t={self.time:8.2f}s  {self.from_preset} -> {self.to_preset}  ({self.reason})"


@dataclass(frozen=True)
class Pacing:
    """How fast the switcher may move: it reads its signals every ``interval_s``, judges each on the last
    ``debounce`` readings, moves to a costlier preset only after ``min_dwell_s`` on the current one, and warms
    the next preset before the swap (``warm``) so the first request after it is not the one that pays."""

    interval_s: float = 1.0
    min_dwell_s: float = 10.0
    debounce: int = 3
    warm: bool = True

    def __post_init__(self):
        if self.min_dwell_s < 0 or self.interval_s <= 0 or self.debounce < 1:
            raise ValueError("min_dwell_s >= 0, interval_s > 0 and debounce >= 1 are required")


class Switcher:
    def __init__(self, runtime, policy: Policy, sources=None, pacing: Pacing = Pacing(),
                 clock: Callable[[], float] = time.monotonic,
                 on_switch: list[Callable[[SwitchEvent], None]] | None = None, ladder: list | None = None):
        self.runtime, self.policy = runtime, policy
        self.sources = list(sources) if sources is not None else []
        self.pacing = pacing
        self.interval_s, self.min_dwell_s, self.debounce = pacing.interval_s, pacing.min_dwell_s, pacing.debounce
        self.clock = clock
        self.callbacks = list(on_switch or [])
        self._ladder = list(ladder) if ladder is not None else None
        self.warm = pacing.warm
        self.events: list[SwitchEvent] = []
        self.last_reason = ""
        self._history: dict[str, deque] = defaultdict(lambda: deque(maxlen=self.debounce))
        self._last_switch = float("-inf")
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def ladder(self):
        """Candidates, cheapest first: the runtime's Pareto front unless a ladder was given."""
        return self._ladder if self._ladder is not None else self.runtime.candidates

    def on_switch(self, fn: Callable[[SwitchEvent], None]) -> None:
        self.callbacks.append(fn)

    def read_signals(self, now: float) -> dict:
        from edgevit.runtime.signals import SIGNALS

        readings = {}
        for s in self.sources:
            try:
                got = s.read(now)
            except Exception as e:  # a flaky sensor must not stop the device program
                log.warning("signal source %s failed: %s", s.name, e)
                continue
            unknown = sorted(set(got) - set(SIGNALS))
            if unknown:   # a misspelt name would leave its policy "unavailable" forever: say so instead
                raise EdgevitError(f"signal source {s.name} reports unknown signal(s) {', '.join(unknown)}; "
                                   f"known signals: {', '.join(SIGNALS)}")
            readings.update(got)
        return readings

    def _debounced(self, readings: dict) -> dict:
        out = dict(readings)
        for k, v in readings.items():
            if isinstance(v, bool):          # a flickering charger contact: the majority of recent readings
                h = self._history[k]
                h.append(float(v))
                out[k] = 2 * sum(h) > len(h)
            elif isinstance(v, (int, float)):
                h = self._history[k]
                h.append(float(v))
                out[k] = statistics.median(h)
        return out

    def tick(self, now: float | None = None, readings: dict | None = None) -> SwitchEvent | None:
        """One decision. ``readings`` replaces the sources (simulation, tests)."""
        now = self.clock() if now is None else now
        signals = self._debounced(self.read_signals(now) if readings is None else readings)
        ladder = self.ladder
        names = [p.name for p in ladder]
        current = self.runtime.current
        cur_idx = names.index(current) if current in names else len(ladder) - 1
        proposal = self.policy.propose(signals, ladder, cur_idx)
        self.last_reason = proposal.reason
        if proposal.index is None:              # no policy has an opinion: stay
            return None
        target = names[proposal.index]
        if target == current:
            return None
        if proposal.index > cur_idx and now - self._last_switch < self.min_dwell_s:
            return None                         # up only after the dwell time; down at once
        if self.warm and hasattr(self.runtime, "warm"):
            self.runtime.warm(target)           # here, not in the first request after the swap
        self.runtime.use(target)
        self._last_switch = now
        event = SwitchEvent(now, current, target, proposal.reason, signals)
        self.events.append(event)
        log.info("switch %s", event)
        for fn in self.callbacks:
            fn(event)
        return event

    # -- background operation ------------------------------------------------------------------------------
    def start(self) -> "Switcher":
        if self._thread is not None:
            return self
        self._stop.clear()

        def loop():
            while not self._stop.wait(self.interval_s):
                try:
                    self.tick()
                except Exception:  # keep serving on the current preset
                    log.exception("switcher tick failed")

        self._thread = threading.Thread(target=loop, name="edgevit-switcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
