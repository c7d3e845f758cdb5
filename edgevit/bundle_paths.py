"""A bundle is a trust boundary: every path its manifest names stays inside the bundle folder.

Bundles travel (scp, artifact stores, other teams), so a manifest may name ``../outside.onnx``, an absolute
path, or a file that is a symlink out of the folder. Each such path is refused before anything is opened,
hashed or run, with an error naming the manifest field and the path. A path must be relative, use ``/``,
have no empty, ``.`` or ``..`` part, and resolve, symlinks followed, inside the bundle folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgevit.errors import EdgevitError

# What the manifest schema says too (manifest.schema.json, $defs/path), so a writer cannot produce one either.
# No line break anywhere: ``.`` stops at one, so "x\n/../y" would slip past the ``..`` look-ahead, and ``$``
# matches before a final one.
PATTERN = r"^(?![\s\S]*[\n\r])(?!/)(?!.*\\)(?!(.*/)?\.{1,2}(/|$))(?!.*//)[^\x00]+$"
_RE = re.compile(PATTERN)
# Keys under an engine's record and settings whose string values are files of the bundle.
_PATH_KEYS = {"file", "extra_files", "onnx", "engine", "inputs", "weights"}


def inside(bundle, rel, field: str, what: str = "bundle") -> Path:
    """``bundle / rel``, or an ``EdgevitError`` naming ``field`` where ``rel`` leaves the bundle. ``what``
    names the folder in the message (a build cache entry is held to the same rule)."""
    if not isinstance(rel, str) or not _RE.match(rel):
        raise EdgevitError(f"{what} {bundle}: {field} is {str(rel)[:200]!r}: expected a relative path inside the "
                           f"{what}, with '/' between parts and no '..', '.' or empty part")
    root = Path(bundle).resolve()
    path = root / rel
    if not path.resolve().is_relative_to(root):
        raise EdgevitError(f"{what} {bundle}: {field} {rel!r} resolves outside the {what} (a symlink to "
                           f"{path.resolve()}); its files must be inside its folder")
    return path


def _walk(value, field: str, found: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _PATH_KEYS and isinstance(v, str):
                found.append((f"{field}.{k}", v))
            elif k in _PATH_KEYS and isinstance(v, list):
                found += [(f"{field}.{k}[{i}]", x) for i, x in enumerate(v)]
            else:
                _walk(v, f"{field}.{k}", found)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{field}[{i}]", found)


def manifest_paths(manifest) -> list[tuple[str, str]]:
    """(field, path) for every file the manifest names."""
    found = [(f"files[{rel!r}]", rel) for rel in manifest.files]
    if manifest.checkpoint is not None:
        found.append(("checkpoint", manifest.checkpoint))
    for p in manifest.presets:
        found.append((f"presets[{p.name}].onnx", p.onnx))
        for b, e in p.engines.items():
            spec = {k: v for k, v in (e.engine or {}).items() if k in ("file", "extra_files", "settings")}
            _walk(spec, f"presets[{p.name}].engines.{b}.engine", found)
            for i, c in enumerate(e.extra.get("candidates_on_device") or []):
                _walk(c, f"presets[{p.name}].engines.{b}.candidates_on_device[{i}]", found)
    return found


def check_paths(bundle, manifest) -> None:
    for field, rel in manifest_paths(manifest):
        inside(bundle, rel, field)
