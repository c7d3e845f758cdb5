"""Signals the switcher reads: battery, CPU load, temperature, Jetson power, the runtime's own queue and
latencies, or a replayed trace.

Every source returns a dict of readings; a reading the platform lacks is absent, and ``status()`` says why
(``unavailable: ...``), so policies degrade to what is there. ``root`` is a parameter so tests can point the
sysfs readers at a fake tree. jetson-stats is not used (it is AGPL); everything comes from sysfs and nvpmodel
(``edgevit.runtime.sensors``, which bench reads too).
"""

from __future__ import annotations

import csv
import glob
import math
import os
import shutil
from pathlib import Path

from edgevit.errors import EdgevitError
from edgevit.files import excerpt

SIGNALS = ("battery_pct", "charging", "cpu_load", "temperature_c", "gpu_load", "power_w", "power_mode",
           "queue_depth", "latency_p90_ms")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class Source:
    name = "source"

    def read(self, now: float) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def status(self) -> str:
        return "ok"


class BatterySource(Source):
    """``/sys/class/power_supply/*`` (type Battery: capacity, status), else psutil.sensors_battery()."""

    name = "battery"

    def __init__(self, root: str = "/sys", use_psutil: bool = True):
        self.batteries = [Path(p) for p in sorted(glob.glob(os.path.join(root, "class/power_supply/*")))
                          if _read(Path(p) / "type") == "Battery" and (Path(p) / "capacity").exists()]
        self.use_psutil = use_psutil and not self.batteries
        self._why = "" if self.batteries else f"no battery under {root}/class/power_supply"

    def read(self, now: float) -> dict:
        if self.batteries:
            # An unreadable capacity is skipped, never read as "no limit".
            caps = [float(v) for v in (_read(b / "capacity") for b in self.batteries) if v and v.isdigit()]
            status = [(_read(b / "status") or "").lower() for b in self.batteries]
            out = {"charging": any(s in ("charging", "full") for s in status)}
            if caps:
                out["battery_pct"] = sum(caps) / len(caps)
            return out
        if self.use_psutil:
            try:
                import psutil

                b = psutil.sensors_battery()
            except (ImportError, AttributeError, RuntimeError):
                b = None
            if b is not None:
                return {"battery_pct": float(b.percent), "charging": bool(b.power_plugged)}
            if not self._why.endswith("psutil reports none"):
                self._why += "; psutil reports none"
        return {}

    def status(self) -> str:
        return "ok" if self.batteries else f"unavailable: {self._why}"


class CpuLoadSource(Source):
    name = "cpu_load"

    def read(self, now: float) -> dict:
        import psutil

        return {"cpu_load": psutil.cpu_percent(interval=None) / 100.0}


class ThermalSource(Source):
    """The hottest of ``/sys/class/thermal/thermal_zone*/temp`` (millidegrees)."""

    name = "thermal"

    def __init__(self, root: str = "/sys"):
        self.zones = [Path(p) for p in sorted(glob.glob(os.path.join(root, "class/thermal/thermal_zone*")))
                      if (Path(p) / "temp").exists()]
        self.root = root

    def read(self, now: float) -> dict:
        temps = []
        for z in self.zones:
            v = _read(z / "temp")
            if v and v.lstrip("-").isdigit():
                temps.append(int(v) / 1000.0)
        return {"temperature_c": max(temps)} if temps else {}

    def status(self) -> str:
        return "ok" if self.zones else f"unavailable: no thermal zones under {self.root}/class/thermal"


class JetsonSource(Source):
    """nvpmodel mode, GPU load (``gpu.0/load``, per mille) and INA3221 board input power."""

    name = "jetson"

    def __init__(self, root: str = "/sys"):
        self.root = root
        from edgevit.runtime.sensors import RailSensor, find_sensor, gpu_load_file

        self.gpu_load = gpu_load_file(root)
        sensor, _ = find_sensor(root)
        self.rails = sensor if isinstance(sensor, RailSensor) else None
        self.nvpmodel = shutil.which("nvpmodel")

    def read(self, now: float) -> dict:
        out = {}
        if self.gpu_load is not None:
            v = _read(self.gpu_load)
            if v and v.isdigit():
                out["gpu_load"] = int(v) / 1000.0
        if self.rails is not None:
            out["power_w"] = self.rails.watts()
        if self.nvpmodel:
            from edgevit.runtime.sensors import jetson_power_mode

            mode = jetson_power_mode(timeout=5)
            if mode is not None:
                out["power_mode"] = mode
        return out

    def status(self) -> str:
        if self.gpu_load is None and self.rails is None and not self.nvpmodel:
            return "unavailable: not a Jetson (no gpu load, INA3221 rails or nvpmodel)"
        return "ok"


class RuntimeSource(Source):
    """The runtime's own requests in flight and recent p90 latency per preset."""

    name = "runtime"

    def __init__(self, runtime):
        self.runtime = runtime

    def read(self, now: float) -> dict:
        return {"queue_depth": self.runtime.in_flight, "latency_p90_ms": self.runtime.recent_p90()}


TRACE_COLUMNS = ("time_s", "battery_pct", "charging", "cpu_load", "temperature_c")


def _parse_bool(v: str, where: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "charging"):
        return True
    if s in ("0", "false", "no", "discharging", ""):
        return False
    raise EdgevitError(f"{where}: charging {excerpt(v)} is not a boolean (expected 0/1/true/false)")


class TraceSource(Source):
    """Replays a CSV: ``time_s,battery_pct,charging,cpu_load,temperature_c`` (empty cell = not measured).

    ``cpu_load`` is 0..1 (or 0..100, read as percent when any value exceeds 1). ``read(now)`` returns the last
    row at or before ``now`` seconds.
    """

    name = "trace"

    def __init__(self, path):
        self.path = Path(path)
        self.rows = load_trace(self.path)
        self._i = 0

    @property
    def duration(self) -> float:
        return self.rows[-1]["time_s"]

    def read(self, now: float) -> dict:
        if now < self.rows[self._i]["time_s"]:
            self._i = 0
        while self._i + 1 < len(self.rows) and self.rows[self._i + 1]["time_s"] <= now:
            self._i += 1
        return {k: v for k, v in self.rows[self._i].items() if k != "time_s" and v is not None}


def load_trace(path) -> list[dict]:
    from edgevit.files import read_text

    path = Path(path)
    text = read_text(path, "trace")
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "time_s" not in reader.fieldnames:
        raise EdgevitError(f"trace {path}: the header must start with time_s; expected columns "
                           f"{', '.join(TRACE_COLUMNS)}")
    unknown = [c for c in reader.fieldnames if c not in TRACE_COLUMNS]
    if unknown:
        raise EdgevitError(f"trace {path}: unknown column {excerpt(unknown[0])}; expected {', '.join(TRACE_COLUMNS)}")
    rows, last_t = [], float("-inf")
    width = len(reader.fieldnames)
    for n, raw in enumerate(reader, start=2):
        cells = len(raw) - (1 if None in raw else 0) + len(raw.get(None) or [])
        missing = [k for k, v in raw.items() if k is not None and v is None]
        if None in raw or missing:   # csv fills short rows with None and collects extra cells under None
            raise EdgevitError(f"trace {path}, line {n}: {cells - len(missing)} cells, the header has {width} "
                               f"(leave a cell empty, not out, when a signal was not measured)")
        row = {}
        for col in TRACE_COLUMNS:
            v = (raw.get(col) or "").strip()
            where = f"trace {path}, line {n}, {col}"
            if col == "charging":
                row[col] = _parse_bool(v, where) if v else None
                continue
            if not v:
                if col == "time_s":
                    raise EdgevitError(f"{where}: required")
                row[col] = None
                continue
            try:
                row[col] = float(v)
            except ValueError:
                raise EdgevitError(f"{where}: {excerpt(v)} is not a number") from None
            if not math.isfinite(row[col]):
                raise EdgevitError(f"{where}: {excerpt(v)} is not a finite number")
        if row["time_s"] < 0:
            raise EdgevitError(f"trace {path}, line {n}, time_s: {row['time_s']} is negative")
        if row["time_s"] < last_t:
            raise EdgevitError(f"trace {path}, line {n}, time_s: {row['time_s']} is earlier than the line before "
                               f"({last_t}); times must not decrease")
        last_t = row["time_s"]
        if row["battery_pct"] is not None and not 0 <= row["battery_pct"] <= 100:
            raise EdgevitError(f"trace {path}, line {n}, battery_pct: {row['battery_pct']} is outside 0..100")
        if row["cpu_load"] is not None and not 0 <= row["cpu_load"] <= 100:
            raise EdgevitError(f"trace {path}, line {n}, cpu_load: {row['cpu_load']:g} is outside 0..1 (fraction) "
                               f"or 0..100 (percent)")
        rows.append(row)
    if not rows:
        raise EdgevitError(f"trace {path}: no rows after the header")
    loads = [r["cpu_load"] for r in rows if r["cpu_load"] is not None]
    if loads and max(loads) > 1.0:
        for r in rows:
            if r["cpu_load"] is not None:
                r["cpu_load"] /= 100.0
    return rows


def default_sources(runtime=None, root: str = "/sys") -> list[Source]:
    sources: list[Source] = [BatterySource(root), CpuLoadSource(), ThermalSource(root), JetsonSource(root)]
    if runtime is not None:
        sources.append(RuntimeSource(runtime))
    return sources
