"""The user's files at the edges of every command: text inputs read with one clear error, and outputs checked
before the long work starts (a 5-minute training must not die at the end on an unwritable path)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgevit.errors import EdgevitError


# What a profile, policy or trace may take: all are hand-written or logged text, far below these.
MAX_BYTES = {"profile": 1 << 20, "policy file": 1 << 20, "trace": 64 << 20}
MAX_YAML_NODES = 100_000        # scalars, lists and mappings once every alias is expanded


def excerpt(value, limit: int = 80) -> str:
    """A bounded ``repr`` for error messages: nested and long values are cut, never expanded whole (a YAML
    alias bomb is a small file and an astronomically long repr)."""
    import reprlib

    r = reprlib.Repr()      # attributes, not keywords: Python 3.10 and 3.11 take none
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 6, 6, 6, 6
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path, what: str) -> str:
    """The UTF-8 text of a profile, trace or policy file, or one line naming the file and the problem."""
    path = Path(path)
    limit = MAX_BYTES.get(what, 64 << 20)
    try:
        size = path.stat().st_size
        if size > limit and path.is_file():
            raise EdgevitError(f"{what} {path}: {size:,} bytes, more than the {limit:,} a {what} may have")
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


def read_yaml(path, what: str):
    """A YAML file's data, refused before it is built if its aliases expand it beyond ``MAX_YAML_NODES``
    nodes ("billion laughs": nine lines that stand for 10^9 strings)."""
    import yaml

    path = Path(path)
    text = read_text(path, what)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EdgevitError(f"{what} {path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if root is None:
        return None
    n = _expanded_nodes(root)
    if n > MAX_YAML_NODES:
        raise EdgevitError(f"{what} {path}: its aliases expand to {n:,} YAML nodes, more than {MAX_YAML_NODES:,}; "
                           f"write the values out instead of repeating anchors")
    return yaml.safe_load(text)


def _expanded_nodes(root) -> int:
    """How many nodes ``root`` stands for with every alias expanded: each distinct node is counted once per
    reference, computed over the distinct nodes only (memoised), so the count costs nothing to take."""
    import yaml

    memo: dict[int, int] = {}
    order, stack = [], [root]
    while stack:      # post-order without recursion: a deep file must not overflow Python's stack
        node = stack.pop()
        if id(node) in memo:
            continue
        memo[id(node)] = -1
        order.append(node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(x for kv in node.value for x in kv)
    for node in reversed(order):
        kids = (node.value if isinstance(node, yaml.SequenceNode) else
                [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else [])
        memo[id(node)] = 1 + sum(memo[id(k)] for k in kids)
    return memo[id(root)]
