"""The model-family protocol: what a family provides, so that generic code never asks for it by name.

A family is one file in ``edgevit/models/`` (timm's way) plus one line in ``registry.FAMILY_MODULES``. The
file defines the ``nn.Module``, registers its variants with ``@register_model(name, family=...)`` and
registers one :class:`Family` with ``register_family``. Training, checkpoints, export, the builder and the
runtime reach family knowledge only through these two things:

**The model** (an instance, what ``create_model`` returns) provides:

- ``presets()`` -> list of :class:`~edgevit.models.presets.Preset` (name, resolution, keep rate, FLOPs,
  params), ``preset(name)`` (``PresetLookup``) and ``check_preset(img_size, keep_rate)``, which raises
  ``EdgevitError`` for a point the model cannot run;
- ``forward(x, img_size=None, keep_rate=1.0)``, split timm-style into ``forward_features`` and
  ``forward_head``;
- ``family`` (its family's name, a class attribute), ``config`` (the keyword options that rebuild it), ``img_size``, ``in_chans``, ``num_classes``,
  ``resolutions`` and ``keep_rates``;
- optionally ``input_kind`` (``"images"``, the default, or ``"patches"``: raw multispectral patches),
  ``int8_keep_fp32`` (node groups ``edgevit.build.quantize`` keeps out of INT8) and ``set_normalization(mean,
  std)`` for patch models, whose per-band statistics live inside the graph.

**The family** (:class:`Family`) provides what is not a property of one instance: the variant a bare family
name means, the training recipe and step, the foreign checkpoint layouts it reads, the model options a
data set decides, and a shared-weight graph where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from edgevit.errors import EdgevitError


@dataclass(frozen=True)
class ForeignLayout:
    """A checkpoint layout other than edgevit's own (official code, timm) that a family can read.

    ``matches(state)`` says whether a state dict is in this layout; ``load(state, model_name, path)``
    returns ``(model, state)``: the model to load (``model_name``, or the variant the weights imply) and the
    state dict converted to its parameter names."""

    name: str
    matches: Callable[[dict], bool]
    load: Callable[[dict, "str | None", object], tuple]
    describe: str = ""   # what the layout's weights look like, for the error when nothing matches


def plain_step(model, x, y, rng, label_smoothing: float = 0.1) -> dict:
    """Cross-entropy at the full resolution and, for a model with several resolution presets (VVT), at a
    random smaller one too: one set of weights then serves every preset, as SuperViT's step does."""
    import torch.nn.functional as F

    net = getattr(model, "module", model)
    sizes = list(getattr(net, "resolutions", []))
    passes = [sizes[-1], rng.choice(sizes[:-1])] if len(sizes) > 1 else [None]
    losses = {}
    for i, size in enumerate(passes):
        loss = F.cross_entropy(model(x) if size is None else model(x, size), y, label_smoothing=label_smoothing)
        loss.backward()
        losses[f"ce{i}"] = float(loss.detach())
    return losses


def no_data_overrides(data: str) -> dict:
    return {}


@dataclass(frozen=True)
class Family:
    name: str
    default_variant: str | None = None        # what `--model <family name>` builds
    input_kind: str = "images"                # or "patches"; the models' own ``input_kind`` says the same
    recipe: dict = field(default_factory=dict)  # training options that differ from TrainConfig's defaults
    # (model, x, y, rng, label_smoothing) -> {loss name: value}; backward() is called inside
    train_step: Callable = plain_step
    foreign_layouts: tuple = ()               # ForeignLayout, tried in order for non-edgevit checkpoints
    # the model options a (non-embedded) data set decides, e.g. a raster's band count
    data_overrides: Callable[[str], dict] = no_data_overrides
    # ``nn.Module`` class with every preset in one graph (``preset_inputs``, ``dynamic_axes``, ``INPUTS``), or None
    shared_presets: type | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def registered_families() -> dict[str, Family]:
    return _FAMILIES


def family_named(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise EdgevitError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None
