"""Bundles: one self-describing directory per model and target.

```
<bundle>/manifest.json     versioned schema: model, target profile, tools, preprocessing, labels, presets
<bundle>/report.md         the same for people
<bundle>/engines/<backend>/<preset>.<precision>.<ext>
<bundle>/onnx/<preset>.onnx    the FP32 export each engine was built from
<bundle>/model.pt          the edgevit checkpoint (torch baseline, rebuilds); optional
```

A bundle is assembled in a hidden sibling directory and renamed into place only when complete, so an
interrupted build leaves nothing at the output path. Every file is listed with its sha256 and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import edgevit.cleanup as cleanup
from edgevit.bundle_paths import check_paths, inside
from edgevit.errors import EdgevitError
from edgevit.files import check_writable_dir
from edgevit.manifest import SCHEMA, Manifest, parse

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20   # 12 presets x 4 backends with every candidate's record is ~200 KB


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete the hidden work directories of earlier builds of ``out`` whose process is gone (SIGKILL, power
    loss: nothing could clean up then). A directory of a build still running is left alone."""
    removed = []
    for d in Path(out).parent.glob(f".{Path(out).name}.partial-*"):
        pid = d.name[len(f".{Path(out).name}.partial-"):].split("-", 1)[0]
        if not pid.isdigit() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue                       # that build is still running
        except ProcessLookupError:
            pass
        except PermissionError:            # alive, owned by someone else
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class BundleWriter:
    """``with BundleWriter(out) as tmp: ...write into tmp...; w.commit(manifest)``: all or nothing."""

    def __init__(self, out):
        self.out = Path(out)
        self.tmp: Path | None = None

    def __enter__(self) -> "BundleWriter":
        check_replaceable(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-{os.getpid()}-", dir=self.out.parent))
        cleanup.register(self.tmp)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)   # not committed: leave nothing behind
            cleanup.unregister(self.tmp)
        return False

    def commit(self, manifest: dict | Manifest, report: str) -> Path:
        """Write the manifest (validated against the shipped schema first) and report, and rename into place."""
        assert self.tmp is not None
        if isinstance(manifest, Manifest):
            manifest = manifest.to_dict()
        # manifest.json and report.md are written below; a bundle being updated in place already has them.
        files = sorted(p for p in self.tmp.rglob("*") if p.is_file() and p.relative_to(self.tmp).as_posix()
                       not in (MANIFEST, "report.md"))
        manifest = {**manifest, "files": {p.relative_to(self.tmp).as_posix(): sha256_file(p) for p in files}}
        parse(manifest, f"the manifest of {self.out}")     # a bundle no reader would accept is never written
        (self.tmp / "report.md").write_text(report)
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        make_readable(self.tmp)
        check_replaceable(self.out)
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.replace(self.out, old / "bundle")
        try:
            os.replace(self.tmp, self.out)
        except OSError:
            if old is not None:  # put the previous bundle back
                os.replace(old / "bundle", self.out)
            raise
        cleanup.unregister(self.tmp)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(root: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the bundle the user's usual permissions."""
    mask = _umask()
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def check_replaceable(out: Path) -> None:
    """The output path may hold nothing, an empty directory, or an edgevit bundle: never anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EdgevitError(f"output {out} exists and is not a directory; choose another --out")
    if not any(out.iterdir()):
        return
    try:
        is_bundle = json.loads((out / MANIFEST).read_text()).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        is_bundle = False
    if not is_bundle:
        raise EdgevitError(f"output {out} exists and is not an edgevit bundle; refusing to replace it "
                           f"(choose another --out, or remove it yourself)")


def output_bundle(path) -> Path:
    """A bundle directory a build will write: absent, empty, or an earlier bundle, in a writable place."""
    path = Path(path)
    check_replaceable(path)
    check_writable_dir(path.parent, "output", path)
    return path


def read_manifest(bundle) -> Manifest:
    """The bundle's manifest, validated against the shipped schema (``edgevit.manifest``) and typed."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise EdgevitError(f"bundle {bundle} does not exist or is not a directory")
    if not path.is_file():
        raise EdgevitError(f"{bundle} is not an edgevit bundle: {MANIFEST} is missing")
    inside(bundle, MANIFEST, MANIFEST)          # a manifest linked in from elsewhere is not this bundle's
    with open(path, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise EdgevitError(f"{path}: larger than {MAX_MANIFEST_BYTES >> 20} MB; an edgevit manifest is a few hundred "
                           f"KB")
    try:
        d = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise EdgevitError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise EdgevitError(f"{path}: not UTF-8 text (byte {e.start}); a manifest is JSON written by edgevit") from None
    except RecursionError:
        raise EdgevitError(f"{path}: nested too deeply to be an edgevit manifest") from None
    manifest = parse(d, str(path))
    check_paths(bundle, manifest)      # before anything it names is opened, hashed or run
    return manifest


def verify_files(bundle, manifest: Manifest | dict, only: list[str] | None = None) -> None:
    """Check sha256 of the listed files (all of them by default); name the first that does not match.
    ``manifest`` is a read one, or the dict ``edgevit engine build`` is rewriting."""
    bundle = Path(bundle)
    listed = manifest.files if isinstance(manifest, Manifest) else manifest["files"]
    for rel in (only if only is not None else listed):
        if rel not in listed:
            raise EdgevitError(f"bundle {bundle}: {rel} is not listed in {MANIFEST}")
        path = inside(bundle, rel, f"files[{rel!r}]")
        if not path.is_file():
            raise EdgevitError(f"bundle {bundle}: engine file {rel} is missing")
        if sha256_file(path) != listed[rel]:
            raise EdgevitError(f"bundle {bundle}: {rel} does not match its sha256 in {MANIFEST} (modified or "
                               f"corrupted); rebuild the bundle")
