"""Exports and compiled engines cached by content: the same weights, preset, opset and tool versions give the
same ONNX, and the same ONNX, candidate, profile section and tool versions the same engine, so a second
build (static or shared) copies them instead of exporting or compiling again.

A cache entry is a trust boundary, as a bundle is: a cache folder is shared between builds and users, and an
entry's files go into bundles that devices run. So an entry records the sha256 of every file it holds, and a
hit is read back checked: its record's fields and types, every path inside the entry (no ``..``, absolute
path or symlink out), every file against its digest. An entry that fails is an error naming it, never a
silent reuse; an entry written before digests were kept is compiled again."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.backends.base import EngineSpec
from edgevit.bundle import sha256_file
from edgevit.bundle_paths import inside
from edgevit.build.cache import ENTRY, Cache, content_key
from edgevit.host import tool_versions
from edgevit.build.profiles import Profile
from edgevit.errors import EdgevitError
from edgevit.version import __version__

WHAT = "build cache entry"
MAX_ENTRY_BYTES = 1 << 20   # a record is a few KB


def write_entry(folder: Path, files: list[str], **record) -> None:
    digests = {rel: sha256_file(inside(folder, rel, "file", WHAT)) for rel in files}
    (folder / ENTRY).write_text(json.dumps({"sha256": digests, **record}))


def read_entry(folder: Path) -> dict | None:
    """An entry's record with every file it lists checked (``None``: the entry keeps no digests, so it is
    from an older edgevit and is made again)."""
    path = inside(folder, ENTRY, ENTRY, WHAT) if (folder / ENTRY).exists() else None
    if path is None:
        return None
    again = f"; remove {folder} (or the build's --cache-dir) and build again"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_ENTRY_BYTES + 1)
        if len(raw) > MAX_ENTRY_BYTES:
            raise ValueError(f"larger than {MAX_ENTRY_BYTES >> 10} KB")
        d = json.loads(raw.decode())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise EdgevitError(f"{WHAT} {path}: unreadable ({type(e).__name__}: {str(e)[:120]}){again}") from None
    if not isinstance(d, dict) or not isinstance(d.get("sha256"), dict):
        raise EdgevitError(f"{WHAT} {path}: expected an object with the sha256 of each file{again}")
    for rel, digest in d["sha256"].items():
        src = inside(folder, rel, f"{ENTRY} sha256[{str(rel)[:80]!r}]", WHAT)
        if not src.is_file() or sha256_file(src) != digest:
            raise EdgevitError(f"{WHAT} {folder}: {rel} is {'changed since it was cached' if src.is_file() else 'missing'}"
                               f"{again}")
    return d


def _cached_file(folder: Path, record: dict, rel: str) -> Path:
    if rel not in record["sha256"]:
        raise EdgevitError(f"{WHAT} {folder}: {rel} is used but has no sha256 in its {ENTRY}; remove the entry "
                           f"(or the build's --cache-dir) and build again")
    return folder / rel


def export_cached(stage: str, parts: tuple, cache: Cache, export) -> tuple[Path, dict, bool]:
    """(ONNX path, export report, whether it was cached). ``export(path)`` writes the ONNX and returns its
    report (a dict); the key is ``parts`` with the exporting tools' versions."""
    v = tool_versions()
    key = content_key(stage, *parts, v["torch"], v["onnx"], v["onnxslim"], __version__)
    hit = cache.get("export", key)
    record = read_entry(hit) if hit else None
    if record is not None:
        if not isinstance(record.get("report"), dict):
            raise EdgevitError(f"{WHAT} {hit}: its {ENTRY} has no export report; remove the entry (or the build's "
                               f"--cache-dir) and build again")
        return _cached_file(hit, record, "model.onnx"), record["report"], True
    with cache.put("export", key) as tmp:
        report = {**export(tmp / "model.onnx"), "path": None}
        write_entry(tmp, ["model.onnx"], report=report)
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
    record = read_entry(hit) if hit else None
    cached = record is not None
    if not cached:
        with cache.put("engine", key) as tmp:
            spec = backend.compile(onnx_path, tmp, name, candidate, site.calib, profile)
            write_entry(tmp, spec.files, spec=spec.to_dict())
        hit = cache.path("engine", key)
        record = read_entry(hit)
    spec = EngineSpec.from_dict(record.get("spec"), f"{WHAT} {hit / ENTRY} spec")
    for rel in spec.files:
        src = _cached_file(hit, record, rel)
        dst = inside(site.bundle_dir, rel, "engine file")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return spec, cached


def array_digest(a: np.ndarray | None) -> str | None:
    """Content key of an array (the calibration set): computed once per build, not per engine."""
    if a is None:
        return None
    return content_key(a.shape, str(a.dtype), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
