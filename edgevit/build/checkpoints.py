"""Checkpoints: ours, and the foreign layouts the model families read (official SuperViT, timm/DeiT, VVT).

Ours is a plain dict of tensors and JSON-like values, so ``torch.load(weights_only=True)`` opens it.
Official training checkpoints carry an ``argparse.Namespace``; that one class is allow-listed. Anything
else that needs pickle is refused unless the caller passes ``trust=True`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgevit.version import __version__
from edgevit.bundle import make_readable
from edgevit.errors import EdgevitError
from edgevit.models import create_model
from edgevit.models.registry import registered_families, resolve

FORMAT = "edgevit-checkpoint"
FORMAT_VERSION = 1
TRUST_FLAG = "--trust-checkpoint"


class PickleRefused(EdgevitError):
    """The checkpoint needs full unpickling, which was not allowed (the message says how to allow it where
    the command has ``--trust-checkpoint``; a command without it says what else to do)."""


@dataclass
class Checkpoint:
    model: torch.nn.Module
    layout: str                     # "edgevit", or a family's ForeignLayout.name
    meta: dict = field(default_factory=dict)   # preprocess, classes, data, metrics, train (ours only)


def save_checkpoint(path, model, **meta) -> Path:
    """Atomically write ``model`` and its metadata (preprocess, classes, data, metrics, train)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "edgevit_version": __version__,
        "model": {"name": model.variant, "config": dict(model.config)},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        **meta,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        make_readable(Path(tmp))  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint_file(path, trust: bool = False) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgevitError(f"checkpoint {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise EdgevitError(f"checkpoint {path} is empty (0 bytes); expected a PyTorch checkpoint file")
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if trust:   # full unpickling was already allowed: the file itself is not a checkpoint
            raise EdgevitError(f"checkpoint {path} is not a PyTorch checkpoint (neither a torch zip file nor a "
                               f"pickle): {str(e).splitlines()[0][:200]}") from None
        if found is None:
            raise PickleRefused(f"checkpoint {path} is not a readable PyTorch file (the weights-only loader "
                                f"refused it); if it is a full pickle you trust, pass {TRUST_FLAG}") from None
        raise PickleRefused(f"checkpoint {path} needs full pickle loading, which can run arbitrary code (it "
                           f"contains {found.group(1)}); pass {TRUST_FLAG} only if you trust where the file "
                           f"came from") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError) as e:
        raise EdgevitError(f"checkpoint {path} is not a readable PyTorch file: {str(e).splitlines()[0]}") from None
    except (ImportError, AttributeError) as e:  # a trusted full pickle naming code this environment lacks
        raise EdgevitError(f"checkpoint {path} refers to code that is not installed here ({e}); it was pickled "
                           f"with its training code: re-save it as a plain state dict") from None
    if not isinstance(obj, dict):
        raise EdgevitError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of weights")
    return obj


def _state_dict_of(obj: dict) -> dict:
    for key in ("model", "state_dict_ema", "state_dict", "model_ema"):
        if isinstance(obj.get(key), dict) and any(torch.is_tensor(v) for v in obj[key].values()):
            state = obj[key]
            break
    else:
        state = obj
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items() if torch.is_tensor(v)}


def _check_own(obj: dict, path) -> None:
    """The fields of an edgevit checkpoint, typed before they are used (a checkpoint comes from anywhere)."""
    def bad(field, expected):
        return EdgevitError(f"checkpoint {path}: field {field} is {type(_get(obj, field)).__name__}: expected "
                            f"{expected} (an edgevit checkpoint, as edgevit train writes it)")

    if not isinstance(obj.get("model"), dict):
        raise bad("model", "an object with name and config")
    if not isinstance(obj["model"].get("name"), str):
        raise bad("model.name", "a model name")
    config = obj["model"].get("config")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise bad("model.config", "an object of model options")
    state = obj.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise bad("state_dict", "an object of named tensors")


def _get(obj: dict, dotted: str):
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def load_into(model, state: dict, source) -> None:
    """Load with every mismatch named: shapes, missing and unexpected keys."""
    own = model.state_dict()
    bad = [f"{k} (checkpoint {list(v.shape)}, model {list(own[k].shape)})"
           for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))

    def few(keys):
        return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

    problems = []
    if bad:
        problems.append(f"shape mismatch: {few(bad)}")
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if problems:
        raise EdgevitError(f"checkpoint {source} does not fit model {getattr(model, 'variant', '?')}: "
                           + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_checkpoint(path, model_name: str | None = None, trust: bool = False) -> Checkpoint:
    """Open any supported layout and return the model in eval mode with the checkpoint's metadata.

    Foreign layouts are the model families' own (``Family.foreign_layouts``: official SuperViT, timm/DeiT,
    official VVT); they build ``model_name``, or the variant the weights imply, with the class count and
    input channels read from the weights.
    """
    obj = read_checkpoint_file(path, trust)
    if obj.get("format") == FORMAT:
        version = obj.get("format_version", 0)
        if type(version) is not int:
            raise EdgevitError(f"checkpoint {path}: field format_version is {type(version).__name__}: expected an "
                               f"integer (an edgevit checkpoint, as edgevit train writes it)")
        if version > FORMAT_VERSION:        # first: a newer layout would fail the field checks below
            raise EdgevitError(f"checkpoint {path} has format version {obj['format_version']}; this edgevit "
                               f"({__version__}) reads up to {FORMAT_VERSION}")
        _check_own(obj, path)
        name = obj["model"]["name"]
        if model_name and resolve(model_name) != name:
            raise EdgevitError(f"checkpoint {path} holds {name}, not {model_name}")
        model = create_model(name, **obj["model"]["config"])
        load_into(model, obj["state_dict"], path)
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "model")}
        return Checkpoint(model.eval(), "edgevit", meta)

    state = _state_dict_of(obj)
    layouts = [lay for fam in registered_families().values() for lay in fam.foreign_layouts]
    for layout in layouts:
        if layout.matches(state):
            model, state = layout.load(state, model_name, path)
            load_into(model, state, path)
            return Checkpoint(model.eval(), layout.name, {})
    raise EdgevitError(f"checkpoint {path} is in no layout edgevit reads ({len(state)} tensors, none of them "
                       f"what these layouts have): edgevit's own (edgevit train), "
                       + "; ".join(lay.describe for lay in layouts))
