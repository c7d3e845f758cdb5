"""Schema fields of YAML configuration (profiles, backends' profile sections): type, default, bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class F:
    """A schema field: python type(s), default (``REQUIRED`` if none), allowed values, numeric bounds."""

    type: Any
    default: Any = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    items: Any = None          # element type/choices for lists


REQUIRED = object()
