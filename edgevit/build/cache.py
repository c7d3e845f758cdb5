"""Content-addressed cache of stage outputs (training, export, engines).

A key is the hash of everything a stage's output depends on (weights, preset, profile section, tool
versions), so a second build for another target finds the training and the exports it can reuse.
Entries are written to a temporary directory and renamed, so a killed build never leaves a half entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgevit import cleanup
from edgevit.bundle import make_readable

ENTRY = "entry.json"      # an entry's record: {"sha256": {file: digest}, ...the stage's own fields}


def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Cache:
    def __init__(self, root):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Path | None:
        p = self.path(stage, key)
        return p if (p / ".complete").exists() else None

    @contextmanager
    def scratch(self, prefix: str):
        """A directory for one build's throw-away files (compiled-engine blobs), removed when it ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}.", dir=self.root))
        cleanup.register(tmp)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            cleanup.unregister(tmp)

    @contextmanager
    def put(self, stage: str, key: str):
        """Yields a scratch directory; on success it becomes the entry ``stage/key``."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        cleanup.register(tmp)
        try:
            yield tmp
            (tmp / ".complete").touch()
            make_readable(tmp)
            if final.exists():
                if (final / ".complete").exists() and (final / ENTRY).exists():
                    return      # another build made it meanwhile: the first stays (its readers may be reading it)
                shutil.rmtree(final)        # half-made, or from an edgevit that kept no digests
            try:
                os.replace(tmp, final)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise                   # else another build renamed its entry into place just now
        finally:
            cleanup.unregister(tmp)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
