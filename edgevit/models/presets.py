"""A preset is one point of a model's accuracy-efficiency trade-off, built later as its own static engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    resolution: int
    keep_rate: float = 1.0
    flops: int = 0          # analytic, fvcore conventions (1 multiply-add = 1 FLOP)
    params: int = 0         # parameters this preset uses (shared weights + its own position table)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gflops"] = round(self.gflops, 6)
        return d


class PresetLookup:
    """``model.preset(name)`` over ``model.presets()``, shared by every model family."""

    def preset(self, name: str) -> Preset:
        presets = self.presets()
        for p in presets:
            if p.name == name:
                return p
        from edgevit.errors import EdgevitError

        raise EdgevitError(f"unknown preset {name!r}; this model has: {', '.join(p.name for p in presets)}")


def preset_name(resolution: int, keep_rate: float | None = None) -> str:
    return f"r{resolution}" if keep_rate is None else f"r{resolution}-k{keep_rate:g}"
