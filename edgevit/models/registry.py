"""A registry of named model variants, timm-style: ``@register_model`` on a factory, ``create_model(name)``.

Factories take keyword overrides (``num_classes``, ``in_chans``, ...) so a checkpoint's recorded
config can rebuild exactly the model it was saved from.
"""

from __future__ import annotations

from typing import Callable

from edgevit.errors import EdgevitError
import edgevit.models.base as _base

_FACTORIES: dict[str, Callable] = {}
_FAMILY: dict[str, str] = {}
# The one line a new family adds (its file is edgevit/models/<module>.py; see models/base.py).
FAMILY_MODULES = ["supervit", "vvt", "wetmapformer"]


def checked_options(cls, family: str, overrides: dict) -> dict:
    """``overrides`` if every key is a keyword ``cls`` takes (its signature, not its local variables)."""
    import inspect

    unknown = set(overrides) - (set(inspect.signature(cls.__init__).parameters) - {"self"})
    if unknown:
        raise EdgevitError(f"unknown {family} option(s): {', '.join(sorted(unknown))}")
    return overrides


def register_model(name: str, family: str):
    def wrap(fn: Callable) -> Callable:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} registered twice")
        _FACTORIES[name] = fn
        _FAMILY[name] = family
        return fn

    return wrap


def unregister_family(name: str) -> None:
    """Forget a family and its variants (tests register toy families and remove them afterwards)."""
    _base.registered_families().pop(name, None)
    for variant in [v for v, f in _FAMILY.items() if f == name]:
        del _FACTORIES[variant], _FAMILY[variant]


def _load_families() -> None:
    # Family modules import torch, so they are loaded on first use of the registry, not at import time.
    import importlib

    for mod in FAMILY_MODULES:
        importlib.import_module(f"edgevit.models.{mod}")


def list_models() -> list[str]:
    _load_families()
    return sorted(_FACTORIES)


def aliases() -> dict[str, str]:
    """A family name stands for its embedded-default variant: `--model vvt` is vvt-nano."""
    _load_families()
    return {f.name: f.default_variant for f in _base.registered_families().values() if f.default_variant}


def resolve(name: str) -> str:
    return aliases().get(name, name)


def registered_families() -> dict:
    _load_families()
    return _base.registered_families()


def family_of(model):
    """The :class:`~edgevit.models.base.Family` of a model instance or a variant name."""
    if isinstance(model, str):
        return _base.family_named(model_family(model))
    _load_families()
    return _base.family_named(getattr(model, "family", None) or model_family(model.variant))


def model_family(name: str) -> str:
    _load_families()
    name = resolve(name)
    _check_name(name)
    return _FAMILY[name]


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise EdgevitError(f"unknown model {name!r}; known models: {', '.join(sorted(_FACTORIES))} "
                           f"(or a family name: {', '.join(f'{a} = {v}' for a, v in aliases().items())})")


def create_model(name: str, **overrides):
    """Build a registered variant; ``overrides`` replace the variant's defaults (e.g. ``num_classes=10``)."""
    _load_families()
    name = resolve(name)
    _check_name(name)
    model = _FACTORIES[name](**overrides)
    model.variant = name
    return model
