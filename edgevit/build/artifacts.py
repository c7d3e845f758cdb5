"""Exports and compiled engines cached by content: the same weights, preset, opset and tool versions give the
same ONNX, and the same ONNX, candidate, profile section and tool versions the same engine, so a second
build (static or shared) copies them instead of exporting or compiling again."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.backends.base import EngineSpec
from edgevit.bundle import sha256_file
from edgevit.build.cache import Cache, content_key
from edgevit.host import tool_versions
from edgevit.build.profiles import Profile
from edgevit.version import __version__


def export_cached(stage: str, parts: tuple, cache: Cache, export) -> tuple[Path, dict, bool]:
    """(ONNX path, export report, whether it was cached). ``export(path)`` writes the ONNX and returns its
    report (a dict); the key is ``parts`` with the exporting tools' versions."""
    v = tool_versions()
    key = content_key(stage, *parts, v["torch"], v["onnx"], v["onnxslim"], __version__)
    hit = cache.get("export", key)
    if hit:
        return hit / "model.onnx", json.loads((hit / "report.json").read_text()), True
    with cache.put("export", key) as tmp:
        report = {**export(tmp / "model.onnx"), "path": None}
        (tmp / "report.json").write_text(json.dumps(report))
    return cache.path("export", key) / "model.onnx", report, False


@dataclass(frozen=True)
class Site:
    """Where one backend's candidates are built and checked: the profile, the build cache, the bundle being
    assembled, the calibration set (with its digest, computed once per build) and the compile cache loads
    import from (OpenVINO: a candidate compiled for validation is imported when it is measured)."""

    backend: object
    profile: Profile
    cache: Cache
    bundle_dir: Path
    calib: np.ndarray | None = None
    calib_digest: str | None = None
    compile_cache: str | None = None

    def load(self, spec: EngineSpec):
        """A runner of ``spec`` through the compile cache."""
        return self.backend.load(self.bundle_dir, self.backend.with_compile_cache(spec, self.compile_cache))

    def validation_runner(self, spec: EngineSpec):
        return self.backend.validation_runner(self.bundle_dir, self.backend.with_compile_cache(spec, self.compile_cache))


def compile_cached(site: Site, onnx_path: Path, name: str, candidate) -> tuple[EngineSpec, bool]:
    """Compile (quantize) one candidate into the site's bundle, reusing a cached one with the same inputs."""
    backend, profile, cache = site.backend, site.profile, site.cache
    section = getattr(profile, backend.name, None) or {}   # the backend's own profile section, if it has one
    calib_digest = site.calib_digest if candidate.precision == "int8" else None   # only INT8 reads the calibration set
    key = content_key("engine", sha256_file(onnx_path), backend.name, name, candidate.id, candidate.precision,
                      candidate.recipe, candidate.level, calib_digest, section, profile.calibration,
                      profile.accuracy, profile.batch, profile.device, backend.cache_tag(), tool_versions(),
                      __version__)
    hit = cache.get("engine", key)
    cached = hit is not None
    if not cached:
        with cache.put("engine", key) as tmp:
            spec = backend.compile(onnx_path, tmp, name, candidate, site.calib, profile)
            (tmp / "spec.json").write_text(json.dumps(spec.to_dict()))
        hit = cache.path("engine", key)
    spec = EngineSpec(**json.loads((hit / "spec.json").read_text()))
    for rel in spec.files:
        dst = site.bundle_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hit / rel, dst)
    return spec, cached


def array_digest(a: np.ndarray | None) -> str | None:
    """Content key of an array (the calibration set): computed once per build, not per engine."""
    if a is None:
        return None
    return content_key(a.shape, str(a.dtype), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
