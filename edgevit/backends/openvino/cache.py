"""OpenVINO's compiled models cached on disk, and checked like the bundle they come from.

A compiled blob is what a device runs, so a flipped byte in it is a wrong answer, not an error: a blob with
bytes flipped in its middle was once read back by OpenVINO's own cache (``CACHE_DIR``) and predicted with
8 % accuracy instead of 98 %, without a word. OpenVINO's cache cannot be made to check what it reads, so
edgevit keeps its own: the blob is ``compiled.export_model()``, named by the settings it was compiled with
and by its own sha256, and ``core.import_model`` reads it only after the bytes match that sha256. A blob
that does not match, or that OpenVINO cannot import, is deleted and compiled again, with one warning on
the ``edgevit.runtime`` logger. A compiled form much larger than the engine's files is not cached at all
(``MAX_BLOB_RATIO``): imported, it would hold more memory than the compiled model does. A blob is written to a temporary file in the same folder and renamed into
place, so a reader never sees half of one, and two processes filling the cache at once each rename a
whole blob (the last one stays).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("edgevit.runtime")
SUFFIX = ".blob"
NOT_CACHED = ".nocache"
# A compiled form this many times the engine's own files is not cached. Static engines export at about their
# IR's size (SuperViT-DeiT-S r224-k1 INT8: 22 MB for 22 MB) and import faster than they compile; a
# branches engine (one If branch per preset, openvino_branches) exports each branch's packed weights apart:
# DeiT-S FP32 branches, 87 MB of IR, exported 994 MB, and imported held 2,260 MB where compiled it held 449 MB.
MAX_BLOB_RATIO = 2.0


def _settings_key(cfg: dict) -> str:
    """What decides the compiled form besides the engine files (which key the folder): the compile settings,
    the OpenVINO version and the CPU's instruction sets."""
    import openvino as ov

    from edgevit.host import cpu_info

    what = {"config": {k: str(v) for k, v in sorted(cfg.items())}, "openvino": ov.get_version(),
            "cpu": cpu_info()["features"]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _discard(path: Path, why: str) -> None:
    log.warning("compile cache: %s %s; deleted, compiling again", path, why)
    path.unlink(missing_ok=True)


def _cached(core, folder: Path, key: str, cfg: dict):
    for path in sorted(folder.glob(f"compiled-{key}-*{SUFFIX}")):
        want = path.name[len(f"compiled-{key}-"):-len(SUFFIX)]
        try:
            data = path.read_bytes()
        except OSError as e:
            log.info("compile cache: cannot read %s (%s)", path, e.strerror)
            continue
        if hashlib.sha256(data).hexdigest() != want:
            _discard(path, "does not match its sha256 (corrupted or modified)")
            continue
        try:
            return core.import_model(data, "CPU", cfg)
        except Exception as e:   # a blob from an OpenVINO that writes another format
            _discard(path, f"cannot be imported ({str(e).strip().splitlines()[0][:200] if str(e).strip() else e})")
    return None


def _store(compiled, folder: Path, key: str, engine_bytes: int) -> None:
    try:
        data = compiled.export_model()
        data = data.getvalue() if hasattr(data, "getvalue") else bytes(data)   # BytesIO in OpenVINO 2026
        if len(data) > MAX_BLOB_RATIO * engine_bytes:
            # Importing it would hold what the compiled model shares: compile at every load instead.
            (folder / f"compiled-{key}{NOT_CACHED}").write_text(
                f"compiled form {len(data) / 2**20:.0f} MB against the engine's {engine_bytes / 2**20:.0f} MB: "
                f"not cached\n")
            log.info("compile cache: not caching %s: its compiled form is %.0f MB against %.0f MB of engine files",
                     folder, len(data) / 2**20, engine_bytes / 2**20)
            return
        digest = hashlib.sha256(data).hexdigest()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".compiled-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / f"compiled-{key}-{digest}{SUFFIX}")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception as e:   # a read-only or full cache costs the next start a compile, nothing more
        log.info("compile cache: could not store a compiled model in %s (%s)", folder, e)


def compile_checked(core, xml_path, cfg: dict, folder) -> object:
    """``core.compile_model(xml_path, "CPU", cfg)``, imported from ``folder`` where a checked blob of the
    same settings is there, else compiled and stored there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.info("compile cache: cannot create %s (%s); compiling without it", folder, e.strerror)
        return core.compile_model(str(xml_path), "CPU", cfg)
    key = _settings_key(cfg)
    if (folder / f"compiled-{key}{NOT_CACHED}").exists():   # can only make this load compile: nothing to check
        return core.compile_model(str(xml_path), "CPU", cfg)
    compiled = _cached(core, folder, key, cfg)
    if compiled is None:
        compiled = core.compile_model(str(xml_path), "CPU", cfg)
        xml = Path(xml_path)
        _store(compiled, folder, key, sum(f.stat().st_size for f in (xml, xml.with_suffix(".bin")) if f.exists()))
    return compiled
