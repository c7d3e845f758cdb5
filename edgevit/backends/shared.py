"""Shared-weight engines on the device: one loaded engine serves every preset, a preset being the inputs
that select it (``edgevit.build.shared`` writes them into the bundle's shared-inputs file and each preset's
binding). Switching presets is choosing another ``SharedRunner``: a reference swap.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from edgevit.backends.base import EngineSpec, Runner
from edgevit.errors import EdgevitError

BRANCH_INPUT = "preset"   # the int64 input that picks a preset's branch, in engines with a branch per preset


class SharedRunner(Runner):
    """One preset of a shared-weight engine (the ``SharedPresets`` graph, or OpenVINO branches): the one
    loaded engine, fed the inputs that select this preset. Switching presets is choosing another
    ``SharedRunner``: a reference swap."""

    def __init__(self, base, feeds: dict, release):
        self.base, self.feeds, self._release = base, feeds, release
        self._infer = base.bind(feeds)   # first: binding may resolve the engine's shapes (TensorRT profiles)
        self.input_name, self.input_shape, self.output_shape = base.input_name, base.input_shape, base.output_shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._infer(batch)

    def close(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


_SHARED_LOCK = threading.Lock()
_SHARED: dict = {}          # (engine path, settings) -> [runner, users]: one engine however many presets


def shared_runner(bundle_dir, spec: EngineSpec, make) -> SharedRunner:
    """A preset's runner on the shared engine of ``spec``, loading that engine only once per process."""
    shared = spec.settings["shared"]
    branches = (spec.quantization or {}).get("branches")
    branch = shared.get("branch")
    if isinstance(branches, list) and not (type(branch) is int and 0 <= branch < len(branches)):
        # Out of range, OpenVINO's If tree would run its last branch (another preset's logits, silently) and
        # ONNX Runtime's If per preset would give an empty batch.
        raise EdgevitError(f"{spec.file}: preset branch {branch!r} is not one of its {len(branches)} branches")
    key = (str((Path(bundle_dir) / spec.file).resolve()),
           json.dumps({k: v for k, v in spec.settings.items() if k != "shared"}, sort_keys=True, default=str))
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            entry = _SHARED[key] = [make(), 0]
        entry[1] += 1

    def release():
        with _SHARED_LOCK:
            entry[1] -= 1
            if entry[1] == 0 and _SHARED.get(key) is entry:
                del _SHARED[key]
                entry[0].close()

    return SharedRunner(entry[0], preset_feeds(bundle_dir, shared), release)


def preset_feeds(bundle_dir, shared: dict) -> dict:
    """The inputs that select one preset of a shared engine: its arrays from the bundle's shared-inputs file,
    for the inputs carried by their length alone zero vectors of that length, and its branch index
    (``shared_build.binding``). Every form of the preset is given; an engine takes the inputs it has."""
    if "lengths" not in shared or "arrays" not in shared:
        raise EdgevitError(f"engine settings field shared: {sorted(shared)} is the shared-weight binding of an older "
                           f"edgevit (expected 'arrays' and 'lengths'); rebuild the bundle with --shared-weights")
    path = Path(bundle_dir) / shared["inputs"]
    if not path.is_file():
        raise EdgevitError(f"bundle {bundle_dir}: {shared['inputs']} is missing (a shared-weight engine's preset "
                           f"inputs); rebuild the bundle with --shared-weights")
    prefix = shared["arrays"] + "/"
    with np.load(path, allow_pickle=False) as z:
        feeds = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
        groups = sorted({k.split("/")[0] for k in z.files})
    if not feeds:
        raise EdgevitError(f"{path}: no arrays for group {shared['arrays']!r} (it has {groups})")
    feeds.update({name: np.zeros(int(n), np.float32) for name, n in shared["lengths"].items()})
    if "branch" in shared:   # engines with a branch per preset take its index (backends.openvino_branches)
        feeds[BRANCH_INPUT] = np.array(int(shared["branch"]), np.int64)
    return feeds
