"""Hardware profiles: one YAML file per target in ``profiles/``, validated on load.

Every key is checked against the schema below: unknown keys are errors (a typo must not pass silently), and
every error names the file, the key path and what was expected. Missing keys take the schema's defaults, so
``Profile.to_dict()`` is the profile as resolved, which is what bundles record.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevit.build.reference import REFERENCE   # allowed where a backend is named
from edgevit.errors import EdgevitError
from edgevit.files import excerpt
from edgevit.runtime.policies import POLICY_KEYS
from edgevit.fields import REQUIRED, F   # the policy registry: names and their parameters


def _profile_dir() -> Path:
    """profiles/ of the checkout (editable installs), else the copy a wheel installs under <prefix>/share."""
    import sys

    beside = Path(__file__).resolve().parents[2] / "profiles"
    installed = Path(sys.prefix) / "share" / "edgevit" / "profiles"
    return beside if beside.is_dir() or not installed.is_dir() else installed


PROFILE_DIR = _profile_dir()
PRECISIONS = ("int8", "bf16", "fp16", "fp32")



SCHEMA: dict = {
    "name": F(str, REQUIRED),
    "description": F(str, ""),
    "device": {
        "kind": F(str, REQUIRED, choices=("cpu", "gpu", "jetson")),
        "arch": F(str, "x86_64", choices=("x86_64", "aarch64")),
        "gpu_arch": F((str, type(None)), None),
        "compute_capability": F((str, type(None)), None),
        "memory_gb": F((int, float, type(None)), None, min=0),
        "dla_cores": F(int, 0, min=0, max=2),
        "power_modes": F(list, [], items=str),
        "jetpack": F((str, type(None)), None),
    },
    # Choices and one section per backend come from the backend registry (``schema()``).
    "backend": F(str, REQUIRED),
    "fallbacks": F(list, [], items=str),
    # An ordered preference, e.g. [int8, bf16, fp32]; a single value still loads. The build tries each
    # backend's candidates for these precisions and ships the fastest that passes the gate (FP32 the floor).
    "precision": F((str, list), ["int8", "fp32"], items=PRECISIONS),
    "batch": F(int, 1, min=1, max=1024),
    # SuperViT: one engine per backend serves every preset (weights resident once) instead of one per preset.
    "shared_weights": F(bool, False),
    "opset": F(int, 17, min=13, max=21),
    "calibration": {
        "samples": F(int, 512, min=1),
        "method": F(str, "minmax", choices=("minmax", "entropy", "percentile")),
    },
    "accuracy": {
        "max_top1_drop": F((int, float), 0.01, min=0, max=1),
        "min_agreement": F((int, float), 0.99, min=0, max=1),
        # One-sided confidence of the gate's bounds: an engine fails where the loss is real at this level.
        "confidence": F(float, 0.95, min=0.5, max=0.999),
    },
    "runtime": {
        "policy": F(str, "fixed", choices=tuple(POLICY_KEYS)),
        "hysteresis_pct": F((int, float), 5, min=0, max=50),
        "min_dwell_s": F((int, float), 10, min=0),
        "battery_thresholds": F(list, [80, 50, 20], items=(int, float)),
        "latency_deadline_ms": F((int, float, type(None)), None, min=0.001),
        "thermal_limit_c": F((int, float), 85, min=0),
        # How often the device serves a request (33 for a 30 fps camera; 0: back to back). The build times
        # every engine after that much idle: cores that went idle cost OpenVINO INT8 1.3 ms more and ONNX
        # Runtime INT8 0.7 ms more at r128-k0.5 (DeiT-S, 2-core AVX-512 host), enough to swap the two.
        "request_interval_ms": F((int, float), 0, min=0, max=10000),
        # MB the device gives its resident presets (null: no limit). Each preset's default engine is then the
        # fastest passing one whose whole set fits (edgevit.build.budget), measured in fresh processes.
        "memory_budget_mb": F((int, float, type(None)), None, min=1),
    },
}


def _type_name(t) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list", dict: "mapping",
             type(None): "null"}
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _check_value(v, f: F, where: str) -> Any:
    types = f.type if isinstance(f.type, tuple) else (f.type,)
    if isinstance(v, bool) and bool not in types:
        raise EdgevitError(f"{where}: expected {_type_name(f.type)}, got {excerpt(v)}")
    if not isinstance(v, types):
        raise EdgevitError(f"{where}: expected {_type_name(f.type)}, got {excerpt(v)}")
    if f.choices is not None and v not in f.choices:
        raise EdgevitError(f"{where}: {excerpt(v)} is not allowed; expected one of {', '.join(map(str, f.choices))}")
    if isinstance(v, str) and isinstance(f.items, tuple) and all(isinstance(c, str) for c in f.items):
        if v not in f.items:  # a single value of a list-valued key (precision: int8)
            raise EdgevitError(f"{where}: {excerpt(v)} is not allowed; expected one of {', '.join(f.items)} or a list of them")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if f.min is not None and v < f.min or f.max is not None and v > f.max:
            lo = "-inf" if f.min is None else f.min
            hi = "inf" if f.max is None else f.max
            raise EdgevitError(f"{where}: {excerpt(v)} is out of range; expected {lo} to {hi}")
    if isinstance(v, list) and f.items is not None:
        for i, item in enumerate(v):
            if isinstance(f.items, tuple) and all(isinstance(c, str) for c in f.items):
                if item not in f.items:
                    raise EdgevitError(f"{where}[{i}]: {excerpt(item)} is not allowed; expected one of {', '.join(f.items)}")
            elif not isinstance(item, f.items) or isinstance(item, bool):
                raise EdgevitError(f"{where}[{i}]: expected {_type_name(f.items)}, got {excerpt(item)}")
    return list(v) if isinstance(v, list) else v


def _resolve(data: Any, schema: dict, where: str) -> dict:
    if not isinstance(data, dict):
        raise EdgevitError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    unknown = [k for k in data if k not in schema]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(schema), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise EdgevitError(f"{where}: unknown key '{k}'{hint}; allowed keys: {', '.join(schema)}")
    out = {}
    for key, f in schema.items():
        path = f"{where}.{key}" if not where.endswith(":") else f"{where} {key}"
        if isinstance(f, dict):
            section = data.get(key)
            if section is None:
                section = {}
            elif not isinstance(section, dict):  # `runtime: 0` is a mistake, not "use the defaults"
                raise EdgevitError(f"{path}: expected a mapping of keys ({', '.join(f)}), got {excerpt(section)}")
            out[key] = _resolve(section, f, path)
        elif key in data:
            out[key] = _check_value(data[key], f, path)
        elif f.default is REQUIRED:
            raise EdgevitError(f"{path}: required key is missing")
        else:
            out[key] = list(f.default) if isinstance(f.default, list) else f.default
    return out


@dataclass(frozen=True)
class Profile:
    """A resolved, validated profile. Sections are plain dicts (JSON-ready for manifests)."""

    data: dict
    path: str

    def __getattr__(self, key):
        try:
            return self.__dict__["data"][key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def backends(self) -> list[str]:
        """Primary backend first, then fallbacks, without repeats."""
        seen = []
        for b in [self.data["backend"], *self.data["fallbacks"]]:
            if b not in seen:
                seen.append(b)
        return seen

    @property
    def request_interval_s(self) -> float:
        """The idle before each timed request in the build's latency pass (``runtime.request_interval_ms``)."""
        return float(self.runtime.get("request_interval_ms", 0) or 0) / 1e3

    @property
    def preferred(self) -> str:
        """The first precision of the profile's preference order."""
        return self.data["precision"][0]

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.data.items()}

    def with_overrides(self, **overrides) -> "Profile":
        """The profile with command-line overrides (``precision``, ``batch``, ``accuracy.min_agreement``, ...)
        applied and validated like the file itself; ``None`` values leave the profile's own."""
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.data.items()}
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, field = key.partition(".")
            if field:
                data[section][field] = value
            else:
                data[section] = value
        return parse_profile(data, f"{self.path} (with command-line overrides)")


def schema() -> dict:
    """The profile schema: the common keys, and each registered backend's own section, which that backend
    declares (``Backend.profile_section``): a new backend brings its keys with it."""
    from edgevit.backends.base import backend_names, get_backend

    names = tuple(backend_names())
    out = dict(SCHEMA)
    out["backend"] = F(str, REQUIRED, choices=names + (REFERENCE,))
    out["fallbacks"] = F(list, [], items=names + (REFERENCE,))
    for name in names:
        out[name] = dict(get_backend(name).profile_section)
    return out


def parse_profile(data: Any, source: str) -> Profile:
    resolved = _resolve(data, schema(), f"{source}:")
    prec = resolved["precision"]
    prec = [prec] if isinstance(prec, str) else prec
    if not prec:
        raise EdgevitError(f"{source}: precision: an empty list; expected one or more of {', '.join(PRECISIONS)}")
    if len(set(prec)) != len(prec):
        raise EdgevitError(f"{source}: precision: {prec} repeats a value")
    resolved["precision"] = list(prec)
    if resolved["backend"] in resolved["fallbacks"]:
        raise EdgevitError(f"{source}: fallbacks: lists the primary backend {resolved['backend']!r} again")
    for i, t in enumerate(resolved["runtime"]["battery_thresholds"]):
        if not 0 <= t <= 100:
            raise EdgevitError(f"{source}: runtime.battery_thresholds[{i}]: {t} is outside 0..100 (percent)")
    from edgevit.backends.base import get_backend

    for name in [resolved["backend"], *resolved["fallbacks"]]:
        kinds = getattr(get_backend(name), "device_kinds", None) if name != REFERENCE else None
        if kinds and resolved["device"]["kind"] not in kinds:
            raise EdgevitError(f"{source}: backend: {name} needs device.kind {' or '.join(kinds)}, not "
                               f"{resolved['device']['kind']}")
    return Profile(resolved, source)


def load_profile_file(path) -> Profile:
    from edgevit.files import read_yaml

    return parse_profile(read_yaml(path, "profile"), str(path))


def list_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_profile(target: str, directory: Path = PROFILE_DIR) -> Profile:
    """A target name from ``profiles/`` or a path to a user's YAML file."""
    candidate = Path(target)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return load_profile_file(candidate)
    path = directory / f"{target}.yaml"
    if not path.is_file():
        known = list_profiles(directory)
        close = difflib.get_close_matches(target, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise EdgevitError(f"unknown target {target!r}{hint}; known targets: {', '.join(known)}, or a path to a "
                           f"profile .yaml file")
    return load_profile_file(path)
