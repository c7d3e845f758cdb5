"""Hardware signals, read in one place for ``edgevit bench`` and the runtime's switcher: x86 RAPL energy
counters and Jetson INA3221 power rails (sysfs), the Jetson GPU load (sysfs) and power mode (nvpmodel).

``find_sensor()`` returns an energy sensor or the reason there is none; the bench prints ``n/a`` with that
reason. ``root`` is a parameter so tests can point the readers at a fake sysfs tree. jetson-stats is not
used (it is AGPL).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from edgevit.errors import EdgevitError


class RaplSensor:
    """Sum of the package domains' ``energy_uj`` counters (wrap-around handled)."""

    name = "rapl"

    def __init__(self, domains: list[Path]):
        self.domains = domains
        self.ranges = [int((d / "max_energy_range_uj").read_text()) if (d / "max_energy_range_uj").exists()
                       else 2 ** 63 for d in domains]

    def _read(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def start(self):
        self._start = self._read()

    def stop(self) -> float:
        """Joules since ``start``."""
        end = self._read()
        total = 0
        for a, b, r in zip(self._start, end, self.ranges):
            total += b - a if b >= a else b + r - a
        return total / 1e6


class RailSensor:
    """Jetson INA3221 rails: power = voltage x current, integrated by a sampling thread (10 ms)."""

    name = "ina3221"

    def __init__(self, rails: list[tuple[str, Path, Path]], period: float = 0.01):
        self.rails, self.period = rails, period

    def watts(self) -> float:
        w = 0.0
        for _, volt, curr in self.rails:
            w += int(volt.read_text()) * int(curr.read_text()) / 1e6   # mV * mA -> W
        return w

    def start(self):
        self._joules, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        last_t, last_w = time.perf_counter(), self.watts()
        while not self._stop.is_set():
            time.sleep(self.period)
            t, w = time.perf_counter(), self.watts()
            self._joules += 0.5 * (w + last_w) * (t - last_t)
            last_t, last_w = t, w

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self._joules


def find_sensor(root: str = "/sys"):
    """(sensor, "") or (None, reason)."""
    rapl = sorted(Path(p) for p in glob.glob(os.path.join(root, "class/powercap/intel-rapl:[0-9]*"))
                  if ":" not in Path(p).name.split("intel-rapl:", 1)[1])
    if rapl:
        readable = [d for d in rapl if os.access(d / "energy_uj", os.R_OK)]
        if readable:
            return RaplSensor(readable), ""
        return None, f"RAPL counters under {root}/class/powercap are not readable (run as root)"
    rails = []
    for label in sorted(glob.glob(os.path.join(root, "bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label"))):
        label = Path(label)
        idx = label.name[2:].split("_")[0]
        volt, curr = label.parent / f"in{idx}_input", label.parent / f"curr{idx}_input"
        if volt.exists() and curr.exists():
            rails.append((label.read_text().strip(), volt, curr))
    main = [r for r in rails if r[0].upper() in ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN")]
    if main or rails:
        return RailSensor(main or rails), ""
    return None, f"no energy sensor: no RAPL under {root}/class/powercap and no INA3221 rails in sysfs"


def gpu_load_file(root: str = "/sys") -> Path | None:
    """The Jetson GPU's load file (per mille), if there is one."""
    loads = glob.glob(os.path.join(root, "devices/platform/*gpu*/load")) + glob.glob(os.path.join(root, "devices/gpu.0/load"))
    return Path(loads[0]) if loads else None


def jetson_power_mode(timeout: float = 10) -> str | None:
    """The nvpmodel power mode's name (``nvpmodel -q``), or None where there is no nvpmodel."""
    exe = shutil.which("nvpmodel")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "Power Mode" in line:
            return line.split(":", 1)[1].strip()
    return None


def power_mode_ids(conf: str = "/etc/nvpmodel.conf") -> dict[str, str]:
    """Mode name -> id from nvpmodel's configuration (``< POWER_MODEL ID=0 NAME=MAXN >``)."""
    if not os.path.exists(conf):
        return {}
    return {m.group(2): m.group(1)
            for m in re.finditer(r"POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+)\s*>", Path(conf).read_text())}


def set_power_mode(name: str, ids: dict[str, str]) -> None:
    if name not in ids:
        raise EdgevitError(f"power mode {name!r} is not in /etc/nvpmodel.conf; this device has: {', '.join(ids)}")
    subprocess.run(["nvpmodel", "-m", ids[name]], check=True, capture_output=True, timeout=60)
    time.sleep(2.0)  # clocks settle
