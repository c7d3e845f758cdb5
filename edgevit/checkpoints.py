"""Checkpoints: ours, and the official SuperViT and timm/DeiT layouts.

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
import torch.nn.functional as F

from edgevit.version import __version__
from edgevit.bundle import make_readable
from edgevit.errors import EdgevitError
from edgevit.models import create_model
from edgevit.models.registry import resolve

FORMAT = "edgevit-checkpoint"
FORMAT_VERSION = 1
TRUST_FLAG = "--trust-checkpoint"


@dataclass
class Checkpoint:
    model: torch.nn.Module
    layout: str                     # "edgevit" | "supervit-official" | "timm-deit"
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
            raise EdgevitError(f"checkpoint {path} is not a readable PyTorch file (the weights-only loader "
                               f"refused it); if it is a full pickle you trust, pass {TRUST_FLAG}") from None
        raise EdgevitError(f"checkpoint {path} needs full pickle loading, which can run arbitrary code (it "
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


def resize_pos_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resize of a [1, 1+g*g, D] table's grid part to ``grid``x``grid``, CLS row kept (timm's way)."""
    cls, pos = table[:, :1], table[:, 1:]
    g = int(round(pos.shape[1] ** 0.5))
    if g * g != pos.shape[1]:
        raise EdgevitError(f"pos_embed has {pos.shape[1]} patch rows, not a square grid")
    pos = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([cls, pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)], dim=1)


def _from_timm_deit(state: dict, model) -> dict:
    state = dict(state)
    table = state.pop("pos_embed")
    for i, r in enumerate(model.resolutions):
        state[f"pos_embed_list.{i}"] = resize_pos_table(table, r // model.patch_size)
    return state


def _vvt_official(state: dict, model_name: str | None, path):
    """The official VVT layout (``block{i}.{j}.attn.q_proj.weight``...): the variant is read from the
    depths and MLP widths in the weights unless ``model_name`` says it."""
    if "head.weight" not in state:
        raise EdgevitError(f"checkpoint {path} looks like VVT (patch_embed1.*) but has no head.weight")
    depths = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"block{i}\.(\d+)\.", k))}
        depths.append(len(idx))
    ratios = []
    for i in range(1, 5):
        fc1, dim = state.get(f"block{i}.0.mlp.fc1.weight"), state[f"patch_embed{i}.proj.weight"].shape[0]
        ratios.append(fc1.shape[0] // dim if fc1 is not None else None)
    overrides = {"num_classes": state["head.weight"].shape[0], "in_chans": state["patch_embed1.proj.weight"].shape[1]}
    if model_name:
        return create_model(model_name, **overrides)
    from edgevit.models.vvt import variant_for

    name = variant_for(depths, ratios, state["patch_embed1.proj.weight"].shape[0])
    if name is None:
        raise EdgevitError(f"checkpoint {path}: VVT weights with depths {depths} and MLP ratios {ratios} match no "
                           f"registered variant; pass --model (vvt-tiny, vvt-small, vvt-medium, vvt-large)")
    return create_model(name, **overrides)


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

    Foreign layouts (official SuperViT, timm/DeiT) build ``model_name`` (default ``supervit-deit-s``)
    with the class count and input channels read from the weights.
    """
    obj = read_checkpoint_file(path, trust)
    if obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise EdgevitError(f"checkpoint {path} has format version {obj['format_version']}; this edgevit "
                               f"({__version__}) reads up to {FORMAT_VERSION}")
        name = obj["model"]["name"]
        if model_name and resolve(model_name) != name:
            raise EdgevitError(f"checkpoint {path} holds {name}, not {model_name}")
        model = create_model(name, **obj["model"]["config"])
        load_into(model, obj["state_dict"], path)
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "model")}
        return Checkpoint(model.eval(), "edgevit", meta)

    state = _state_dict_of(obj)
    if "patch_embed1.proj.weight" in state:
        model, layout = _vvt_official(state, model_name, path), "vvt-official"
        load_into(model, state, path)
        return Checkpoint(model.eval(), layout, {})
    if "head.weight" not in state or "patch_embed.proj.weight" not in state:
        raise EdgevitError(f"checkpoint {path} is not a SuperViT/DeiT checkpoint: no head.weight or "
                           f"patch_embed.proj.weight among {len(state)} tensors")
    overrides = {"num_classes": state["head.weight"].shape[0], "in_chans": state["patch_embed.proj.weight"].shape[1]}
    model = create_model(model_name or "supervit-deit-s", **overrides)
    if "pos_embed_list.0" in state:
        layout = "supervit-official"
    elif "pos_embed" in state:
        layout, state = "timm-deit", _from_timm_deit(state, model)
    else:
        raise EdgevitError(f"checkpoint {path} has neither pos_embed_list.* (official SuperViT) nor pos_embed "
                           f"(timm/DeiT)")
    load_into(model, state, path)
    return Checkpoint(model.eval(), layout, {})
