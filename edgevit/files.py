"""The user's files at the edges of every command: text inputs read with one clear error, and outputs checked
before the long work starts (a 5-minute training must not die at the end on an unwritable path)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgevit.errors import EdgevitError


def read_text(path, what: str) -> str:
    """The UTF-8 text of a profile, trace or policy file, or one line naming the file and the problem."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise EdgevitError(f"{what} {path}: is a directory, expected a file") from None
    except OSError as e:
        raise EdgevitError(f"{what} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise EdgevitError(f"{what} {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                           f"save it as UTF-8") from None


def check_writable_dir(directory: Path, what: str, target: Path) -> None:
    anc = directory
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise EdgevitError(f"{what} {target}: {anc} is not a directory")
    try:   # a real write: os.access says yes to root on read-only file systems
        fd, probe = tempfile.mkstemp(prefix=".edgevit-write-check-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise EdgevitError(f"{what} {target}: cannot write in {anc} ({e.strerror})") from None


def output_file(path, what: str, default_name: str | None = None) -> Path:
    """A file a command will write. An existing folder means "inside it, under ``default_name``"; a path
    that cannot be written is refused now, in one line."""
    path = Path(path)
    if path.is_dir():
        if default_name is None:
            raise EdgevitError(f"{what} {path} is a directory; expected a file path")
        path = path / default_name
        if path.is_dir():
            raise EdgevitError(f"{what} {path} is a directory; expected a file path")
    check_writable_dir(path.parent, what, path)
    return path
