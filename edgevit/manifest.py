"""The bundle manifest, typed: ``Manifest`` -> ``PresetEntry`` -> ``EngineEntry``, and the JSON Schema they obey.

Every manifest is read through :func:`parse` (``bundle.read_manifest``) and written through it
(``BundleWriter.commit``), so a bundle that does not match ``manifest.schema.json`` (shipped in this
package) is a clear error naming the field, on the workstation that writes it and on the device that
reads it. The schema version is checked exactly: this edgevit reads version ``SCHEMA_VERSION`` and no other.

The build makes these types as it works (``build.pipeline.entry_for`` gives an ``EngineEntry``, the builder a
``PresetEntry`` per preset and the ``Manifest``), and ``edgevit engine build`` rewrites a read one in place;
both are checked against the schema when written. ``to_dict(from_dict(d)) == d`` for every valid ``d``, so
reading and rewriting a manifest (``edgevit engine build``) changes nothing it does not mean to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from edgevit.errors import EdgevitError

SCHEMA = "edgevit-bundle"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
PENDING = "pending-device-build"   # an engine's status: the target device builds it from the bundle's kit


class _Record:
    """to_dict/from_dict for the three levels: declared fields, in the order the manifest had them; a field
    that was absent and is still None stays absent. ``extra`` (engine entries only) holds backend-specific
    figures the schema leaves open."""

    _nested: dict = {}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)} - {"extra", "present"}
        kwargs = {k: cls._nested[k](v) if k in cls._nested else v for k, v in d.items() if k in names}
        if "extra" in {f.name for f in fields(cls)}:
            kwargs["extra"] = {k: v for k, v in d.items() if k not in names}
        return cls(**kwargs, present=tuple(d))

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "present")}
        values.update(getattr(self, "extra", {}))
        order = list(self.present) + [k for k in values if k not in self.present]
        out = {}
        for k in order:
            v = values.get(k)
            if k not in values or (v is None and k not in self.present):
                continue
            out[k] = _plain(v)
        return out


def _plain(v):
    if isinstance(v, _Record):
        return v.to_dict()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


@dataclass
class EngineEntry(_Record):
    """One preset on one backend: the chosen engine, its figures and every candidate considered."""

    status: str                         # "ok", "pending-device-build", "failed-validation", ...
    engine: dict | None = None          # EngineSpec.to_dict(): backend, precision, file, settings, ...
    precision: str | None = None
    recipe: str | None = None
    top1: float | None = None
    agreement: float | None = None
    gate: dict | None = None
    latency_ms: dict | None = None      # p50/p90/p99 from the interleaved pass, None where not measured
    chosen: dict | None = None
    candidates: list = field(default_factory=list)
    fallback: dict | None = None
    pareto: bool | None = None
    reason: str | None = None
    resident_mb: dict | None = None     # {"added", "all_presets"}: MB resident, measured in a fresh process
    extra: dict = field(default_factory=dict)
    present: tuple = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def latency(self, stat: str = "p50") -> float | None:
        return (self.latency_ms or {}).get(stat)


@dataclass
class PresetEntry(_Record):
    name: str
    resolution: int
    keep_rate: float
    flops: int
    gflops: float
    params: int
    onnx: str
    export: dict
    torch: dict                         # the PyTorch reference's top-1 on the validation split
    engines: dict = field(default_factory=dict)   # backend name -> EngineEntry
    default: dict | None = None         # {"backend", "why"}: what edgevit.load runs
    pareto: bool | None = None
    present: tuple = field(default=(), repr=False, compare=False)
    _nested = {"engines": lambda d: {b: EngineEntry.from_dict(e) for b, e in d.items()}}

    def default_backend(self) -> str | None:
        return (self.default or {}).get("backend")


@dataclass
class Manifest(_Record):
    schema: str
    schema_version: int
    edgevit_version: str
    created: str
    name: str
    model: dict                         # name, family, config, params, source, layout, weights_digest
    target: dict                        # the profile the bundle was built for, resolved
    profile_file: str | None
    backend: str                        # the profile's first backend
    backends: list
    unavailable_backends: dict
    precision: list | str
    opset: int
    engine_mix: dict
    input: dict
    output: dict
    preprocess: dict
    labels: list
    data: dict
    tools: dict
    host: dict
    latency_measured_here: bool
    latency_note: str | None
    checkpoint: str | None
    build_seconds: float
    presets: list                       # PresetEntry, in build order (largest first)
    files: dict = field(default_factory=dict)   # relative path -> sha256
    obtain_seconds: float | None = None
    device_build: dict | None = None    # a deferred backend's record (TensorRT's kit)
    memory: dict | None = None          # per backend, MB resident with every preset loaded (edgevit.build.memory)
    present: tuple = field(default=(), repr=False, compare=False)
    _nested = {"presets": lambda ps: [PresetEntry.from_dict(p) for p in ps]}

    @property
    def request_interval_s(self) -> float:
        """The idle before each timed request the bundle was measured with (``runtime.request_interval_ms``;
        bundles from before it: 0, back to back)."""
        return float((self.target.get("runtime") or {}).get("request_interval_ms") or 0) / 1e3

    def preset(self, name: str) -> PresetEntry:
        for p in self.presets:
            if p.name == name:
                return p
        raise EdgevitError(f"bundle {self.name} has no preset {name!r}; it has: "
                           f"{', '.join(p.name for p in self.presets)}")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@lru_cache(maxsize=1)
def _validator():
    # Built once per process: a runtime reading several bundles, or a build writing one, checks each with it.
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def check(d, where: str) -> None:
    """Raise ``EdgevitError`` naming ``where`` and the field, unless ``d`` is a manifest this edgevit reads."""
    if not isinstance(d, dict):
        raise EdgevitError(f"{where}: the manifest is a JSON {type(d).__name__}, expected an object")
    if d.get("schema") != SCHEMA:
        raise EdgevitError(f"{where}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
    version = d.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise EdgevitError(f"{where}: schema_version {version!r} is not an integer; this edgevit reads bundles "
                           f"of schema_version {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        from edgevit.version import __version__

        advice = "upgrade edgevit" if version > SCHEMA_VERSION else "rebuild the bundle with this edgevit"
        raise EdgevitError(f"{where}: schema_version {version} is not the one this edgevit ({__version__}) reads "
                           f"({SCHEMA_VERSION}); {advice}")
    errors = list(_validator().iter_errors(d))
    if errors:
        import jsonschema

        from edgevit.files import excerpt

        e = jsonschema.exceptions.best_match(errors)
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        # a pattern says what it means in its description (a bundle path), not as a regular expression
        message = (f"{excerpt(e.instance)}: expected {e.schema['description']}"
                   if e.validator == "pattern" and "description" in e.schema else e.message)
        raise EdgevitError(f"{where}: field {at}: {message} (manifest.schema.json, schema_version "
                           f"{SCHEMA_VERSION})")


def parse(d, where: str) -> Manifest:
    check(d, where)
    return Manifest.from_dict(d)
