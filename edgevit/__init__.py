"""edgevit: vision transformers from training to validated engines on edge devices.

The top level stays import-light (no torch) so that device programs and ``edgevit --help`` start fast.
"""

from edgevit import privacy
from edgevit.errors import EdgevitError
from edgevit.version import __version__

privacy.off()   # before any library is imported: nothing is sent from edgevit's processes (EDGEVIT_TELEMETRY=1 opts in)

__all__ = ["__version__", "EdgevitError", "load"]


def load(bundle, backend=None, presets=None, verify=True, cache=True, background=True, max_pixels=None):
    """Open a bundle for inference: ``rt = edgevit.load("bundles/supervit-nano-x86-cpu")``.

    ``backend`` pins one backend (default: each preset's fastest measured engine that this device can run);
    ``presets`` loads a subset (a name or a list of names); ``verify`` checks the engines' sha256; ``cache`` keeps compiled engines in
    a per-user cache so the next start is fast; ``background`` returns once the starting preset is loaded
    and loads the others in a background thread (``rt.wait_loaded()`` waits for them); ``max_pixels`` bounds
    the image files ``predict`` decodes (default: PIL's 89.5 M pixels)."""
    from edgevit.runtime import load as _load

    return _load(bundle, backend=backend, presets=presets, verify=verify, cache=cache, background=background,
                 max_pixels=max_pixels)
