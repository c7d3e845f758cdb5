"""One TensorRT engine for every preset of a shared-weight bundle: an optimisation profile per preset.

The shared graph (``SharedPresets``) takes a preset as inputs whose shapes are the preset: ``size`` (length:
the resolution), ``pos_embed`` (that resolution's position table), ``keep1..3`` (lengths: the tokens kept).
TensorRT builds one kernel plan per optimisation profile and keeps one copy of the weights for all of them,
so a profile per preset, each pinned to that preset's exact shapes (min = opt = max), gives every preset
a static-shape plan over weights held once in GPU memory. A preset's profile index is its branch index in
the bundle's binding (``edgevit.build.shared.binding``), so the device finds its profile without a search.
"""

from __future__ import annotations

from pathlib import Path

from edgevit.backends.shared import BRANCH_INPUT, preset_feeds
from edgevit.errors import EdgevitError


def _image_input(onnx_path: Path) -> tuple[str, list[int]]:
    """The graph's image input (its first input) and its static shape, read without its weights."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    first = graph.input[0]
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim]
    if not dims or any(d <= 0 for d in dims):
        raise EdgevitError(f"{onnx_path}: input {first.name!r} has shape {dims}; a shared-weight engine's image "
                           f"input must be static (the full-size image every preset resizes)")
    return first.name, dims


def preset_profiles(bundle_dir, onnx_rel: str, bindings: list[tuple[str, dict]]) -> list[dict]:
    """The optimisation profiles of the engine built from ``onnx_rel``, one per ``(preset, shared binding)``,
    in branch order: ``[{"preset": name, "shapes": {input: [dims]}}]``. The shapes come from the bundle's
    shared-inputs file, as the runtime will feed them. Refuses bindings whose branches are not 0..n-1."""
    bundle_dir = Path(bundle_dir)
    image, image_shape = _image_input(bundle_dir / onnx_rel)
    by_branch = {}
    for name, shared in bindings:
        if "branch" not in shared:
            raise EdgevitError(f"preset {name}: its shared-weight binding has no branch index (profile index); "
                               f"rebuild the bundle with --shared-weights")
        by_branch.setdefault(int(shared["branch"]), []).append(name)
    if sorted(by_branch) != list(range(len(bindings))) or any(len(v) > 1 for v in by_branch.values()):
        raise EdgevitError(f"the shared-weight bindings' branches {sorted(by_branch)} are not one per preset "
                           f"numbered from 0 ({len(bindings)} presets); rebuild the bundle with --shared-weights")
    out = []
    for name, shared in sorted(bindings, key=lambda b: int(b[1]["branch"])):
        feeds = preset_feeds(bundle_dir, shared)
        feeds.pop(BRANCH_INPUT, None)    # the profile index itself, not a tensor of the graph
        out.append({"preset": name, "shapes": {image: list(image_shape),
                                               **{k: [int(d) for d in v.shape] for k, v in sorted(feeds.items())}}})
    return out


def shape_spec(shapes: dict) -> str:
    """trtexec's spelling of one profile's shapes: ``name:1x3x224x224,size:160,...``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def trtexec_flags(profiles: list[dict]) -> list[str]:
    """One ``--profile=i`` followed by its min, opt and max shapes per profile (trtexec 10's multi-profile
    form, samples/common/sampleOptions.cpp: the shapes after ``--profile=i`` belong to profile i)."""
    flags = []
    for i, p in enumerate(profiles):
        spec = shape_spec(p["shapes"])
        flags += [f"--profile={i}", f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}"]
    return flags


def add_profiles(builder, network, config, profiles: list[dict]) -> None:
    """Add one optimisation profile per entry of ``profiles`` to ``config``, each pinned to its shapes; every
    input of ``network`` must be named by every profile, and every name must be an input."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for i, p in enumerate(profiles):
        names = set(p["shapes"])
        if names != inputs:
            raise EdgevitError(f"optimisation profile {i} ({p['preset']}) gives shapes for {sorted(names)}, the "
                               f"network's inputs are {sorted(inputs)}; rebuild the bundle with --shared-weights")
        prof = builder.create_optimization_profile()
        for name, dims in p["shapes"].items():
            prof.set_shape(name, dims, dims, dims)
        if config.add_optimization_profile(prof) < 0:
            raise EdgevitError(f"TensorRT refused optimisation profile {i} ({p['preset']}): {p['shapes']}")
