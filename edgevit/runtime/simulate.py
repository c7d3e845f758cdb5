"""``edgevit simulate``: replay a signal trace against a bundle and a policy.

The clock is simulated (a 2-hour battery trace replays in seconds): at every step the trace's signals go
to the switcher, and the frames of that step are served on the chosen preset, either by the real engines
(one measured inference per step, scaled to the step's frames) or, with ``--dry``, by the manifest's latencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.errors import EdgevitError
from edgevit.files import excerpt
from edgevit.runtime.policies import Policy, build_policy, policy_from_profile
from edgevit.runtime.signals import TraceSource
from edgevit.runtime.switcher import Pacing, Switcher


@dataclass
class SimOptions:
    bundle: str
    trace: str
    policy: str = "battery"        # a policy name (parameters from the bundle's profile) or a .yaml file
    dry: bool = False
    step_s: float = 1.0
    fps: float = 10.0
    power_w: float = 10.0
    min_dwell_s: float | None = None
    backend: str | None = None


def load_policy(policy: str, runtime_section: dict) -> tuple[Policy, dict]:
    """A policy and its switcher settings (min_dwell_s, debounce) from a name or a YAML file."""
    path = Path(policy)
    settings = {"min_dwell_s": runtime_section.get("min_dwell_s", 10), "debounce": 3}
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from edgevit.files import read_yaml

        spec = read_yaml(path, "policy file")
        pol = build_policy(spec, f"policy file {path}")
        for key in ("min_dwell_s", "debounce"):
            if key in spec:
                v = spec[key]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < (1 if key == "debounce" else 0):
                    raise EdgevitError(f"policy file {path}.{key}: expected a number >= "
                                       f"{1 if key == 'debounce' else 0}, got {excerpt(v)}")
                settings[key] = int(v) if key == "debounce" else float(v)
        return pol, settings
    return policy_from_profile(policy, runtime_section), settings


def simulate(opts: SimOptions) -> dict:
    from edgevit.bundle import read_manifest
    from edgevit.runtime.runtime import load, load_info

    manifest = read_manifest(opts.bundle)
    policy, settings = load_policy(opts.policy, manifest.target.get("runtime", {}))
    if opts.min_dwell_s is not None:
        settings["min_dwell_s"] = opts.min_dwell_s
    trace = TraceSource(opts.trace)
    rt = load_info(opts.bundle, opts.backend) if opts.dry else load(opts.bundle, opts.backend)
    if opts.dry and any(p.latency_ms is None for p in rt.candidates):
        raise EdgevitError(f"--dry needs build-host latencies in {opts.bundle}'s manifest, and it has none "
                           f"({manifest.latency_note}); run without --dry on the device")
    sw = Switcher(rt, policy, sources=[],
                  pacing=Pacing(min_dwell_s=settings["min_dwell_s"], debounce=settings["debounce"]))
    info = {p.name: p for p in rt.presets}
    sample = np.zeros(tuple(manifest.input["shape"]), np.float32)
    timeline, per_preset = [], {}
    frames_total, weighted_top1, energy_j = 0.0, 0.0, 0.0
    t = 0.0
    end = trace.duration
    while t <= end + 1e-9:
        readings = trace.read(t)
        if opts.dry:
            # Other work holding a fraction `load` of the CPU leaves inference the rest (processor sharing):
            # what the latency policy would see live, so a load trace moves it in dry runs too.
            slow = 1.0 / max(0.05, 1.0 - (readings.get("cpu_load") or 0.0))
            readings["latency_p90_ms"] = {p.name: (p.latency_p90_ms or p.latency_ms) * slow for p in rt.candidates}
        else:
            readings["latency_p90_ms"] = rt.recent_p90()
        sw.tick(now=t, readings=readings)
        name = rt.current
        if opts.dry:
            latency = info[name].latency_ms * slow
        else:
            pred = rt.predict(sample, preprocessed=True)
            latency = rt.recent_p90(min_samples=1).get(pred.preset, 0.0)
        frames = opts.fps * opts.step_s
        frames_total += frames
        weighted_top1 += frames * (info[name].top1 or 0.0)
        energy_j += frames * latency / 1e3 * opts.power_w
        per_preset[name] = per_preset.get(name, 0.0) + opts.step_s
        timeline.append({"t": t, "preset": name, "latency_ms": latency, **{k: v for k, v in readings.items()
                                                                           if k != "latency_p90_ms"}})
        t += opts.step_s
    rt.close()
    return {
        "notes": _abstained(policy, timeline),
        "bundle": manifest.name, "policy": policy.describe(), "dry": opts.dry, "settings": settings,
        "ladder": [p.name for p in rt.candidates],
        "switches": [e.__dict__ | {"signals": {k: v for k, v in e.signals.items() if k != "latency_p90_ms"}}
                     for e in sw.events],
        "time_per_preset_s": per_preset, "duration_s": end,
        "mean_top1": weighted_top1 / frames_total if frames_total else None,
        "frames": frames_total, "energy_j_estimate": energy_j, "power_w_assumed": opts.power_w,
        "timeline": timeline,
    }


def _abstained(policy, timeline: list[dict]) -> list[str]:
    """A policy whose signal the trace never carries abstained throughout: say so, or the run looks fine."""
    measured = {"latency_p90_ms", "queue_depth"}
    seen = {k for row in timeline for k, v in row.items() if v is not None}
    return [f"{s} is absent from the whole trace: the policies that read it abstained throughout"
            for s in sorted(policy.signals() - measured - seen)]


def summary_text(r: dict) -> str:
    lines = [f"policy {r['policy']}, min dwell {r['settings']['min_dwell_s']} s, debounce {r['settings']['debounce']}"
             f"{' (dry: manifest latencies)' if r['dry'] else ''}",
             f"candidates (cheapest first): {', '.join(r['ladder'])}", "", "switches:"]
    if not r["switches"]:
        lines.append("  none")
    for e in r["switches"]:
        lines.append(f"  t={e['time']:8.1f}s  {e['from_preset']} -> {e['to_preset']}  ({e['reason']})")
    lines += ["", "time per preset:"]
    for name in r["ladder"]:
        if name in r["time_per_preset_s"]:
            s = r["time_per_preset_s"][name]
            lines.append(f"  {name:<12} {s:9.1f} s  {100 * s / max(1e-9, sum(r['time_per_preset_s'].values())):5.1f}%")
    lines += [f"note: {n}" for n in r.get("notes", [])]
    lines += ["", f"mean top-1 over {r['frames']:.0f} frames: {100 * r['mean_top1']:.2f}%",
              f"estimated energy: {r['energy_j_estimate']:.1f} J (inference time x {r['power_w_assumed']} W assumed)"]
    return "\n".join(lines)


def plot(r: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = r["timeline"]
    t = [row["t"] for row in tl]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, dpi=120,
                                   gridspec_kw={"height_ratios": [3, 2]})
    for key, label in (("battery_pct", "battery %"), ("cpu_load", "CPU load %"), ("temperature_c", "temperature C")):
        ys = [row.get(key) for row in tl]
        if any(y is not None for y in ys):
            scale = 100.0 if key == "cpu_load" else 1.0
            ax1.plot(t, [np.nan if y is None else y * scale for y in ys], label=label, lw=1)
    ax1.set_ylabel("signal")
    ax1.legend(fontsize=8, loc="upper right")
    ax1.grid(alpha=0.3)
    ladder = r["ladder"]
    ax2.step(t, [ladder.index(row["preset"]) for row in tl], where="post", color="black", lw=1.2)
    ax2.set_yticks(range(len(ladder)))
    ax2.set_yticklabels(ladder, fontsize=7)
    ax2.set_ylabel("preset")
    ax2.set_xlabel("time (s)")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{r['bundle']}: {r['policy']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
