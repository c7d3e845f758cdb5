"""The GPU device an engine is built on or loaded on, and whether a TensorRT engine may run there.

TensorRT engines are tied to the TensorRT version and the GPU architecture they were built for, and a
Jetson's TensorRT comes with its JetPack/L4T release (docs/architecture.md, "Backends"). Bundles record all three
(``device_info``); loading compares them (``engine_mismatches``) and refuses a mismatch by name.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")


def l4t_release(path: Path = L4T_RELEASE_FILE) -> str | None:
    """``"36.3.0"`` from ``# R36 (release), REVISION: 3.0, ...``; None off a Jetson."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


# JetPack 6 ships L4T R36, JetPack 5 ships R35 (NVIDIA's release tables); the TensorRT major follows.
JETPACK_OF_L4T_MAJOR = {"36": "6", "35": "5", "34": "5"}


def jetpack_of(l4t: str | None) -> str | None:
    return JETPACK_OF_L4T_MAJOR.get(l4t.split(".")[0]) if l4t else None


def _cuda_device() -> dict | None:
    """Name and compute capability of CUDA device 0, from torch or cuda-python, whichever is installed."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        from edgevit.backends.tensorrt.cuda_memory import cudart
    except ImportError:
        return None
    rt = cudart()
    if rt is None:
        return None
    err, props = rt.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


@lru_cache(maxsize=1)
def device_info() -> dict:
    """What a TensorRT engine built here is tied to. Fields are None where there is no such thing."""
    info = {"tensorrt": None, "gpu": None, "compute_capability": None, "l4t": l4t_release(), "jetpack": None}
    info["jetpack"] = jetpack_of(info["l4t"])
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    cuda = _cuda_device()
    if cuda:
        info.update(cuda)
    return info


def tensorrt_ready() -> tuple[bool, str]:
    """Whether engines can be built and run here; if not, the reason in a user's words."""
    info = device_info()
    if info["tensorrt"] is None:
        return False, "the tensorrt Python package is not installed"
    if info["compute_capability"] is None:
        return False, "no CUDA GPU is visible (torch.cuda or cuda-python found none)"
    return True, ""


def _cc(value: str) -> tuple[int, int]:
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def engine_mismatches(built_on: dict, here: dict, settings: dict | None = None) -> list[str]:
    """Why an engine built on ``built_on`` must not be loaded ``here`` (empty: it may).

    TensorRT's rules: an engine needs the exact TensorRT version it was built with, unless it was built
    version-compatible (then any later TensorRT of the same major, with the lean runtime embedded); and the
    compute capability it was built for, unless it was built hardware-compatible for Ampere and later
    (compute capability 8.0 or newer, not Jetson). On a Jetson the L4T release must also match, since
    JetPack pins TensorRT, CUDA and the GPU driver together.
    """
    settings = settings or {}
    problems = []
    built_trt, here_trt = built_on.get("tensorrt"), here.get("tensorrt")
    if here_trt is None:
        problems.append("TensorRT is not installed here")
    elif built_trt and built_trt != here_trt:
        same_major = built_trt.split(".")[0] == here_trt.split(".")[0]
        newer = tuple(map(int, re.findall(r"\d+", here_trt)[:3])) >= tuple(map(int, re.findall(r"\d+", built_trt)[:3]))
        if not (settings.get("version_compatible") and same_major and newer):
            problems.append(f"TensorRT {built_trt} built it, this device has TensorRT {here_trt}")
    built_cc, here_cc = built_on.get("compute_capability"), here.get("compute_capability")
    if here_cc is None:
        problems.append("no CUDA GPU is visible here")
    elif built_cc and built_cc != here_cc:
        portable = settings.get("hardware_compatibility") == "ampere_plus" and _cc(here_cc) >= (8, 0) \
            and not here.get("l4t")
        if not portable:
            problems.append(f"it was built for compute capability {built_cc} ({built_on.get('gpu') or 'GPU'}), "
                            f"this device is {here_cc} ({here.get('gpu') or 'GPU'})")
    if built_on.get("l4t") != here.get("l4t") and (built_on.get("l4t") or here.get("l4t")):
        problems.append(f"it was built on L4T {built_on.get('l4t') or 'none (not a Jetson)'}, this device runs "
                        f"L4T {here.get('l4t') or 'none (not a Jetson)'}")
    return problems


def target_mismatches(target_device: dict, here: dict) -> list[str]:
    """Why this device is not the profile's target (compute capability, Jetson or not, JetPack)."""
    problems = []
    want_cc = target_device.get("compute_capability")
    if want_cc and here.get("compute_capability") and here["compute_capability"] != want_cc:
        problems.append(f"the target needs compute capability {want_cc}, this GPU ({here.get('gpu')}) is "
                        f"{here['compute_capability']}")
    if target_device.get("kind") == "jetson" and not here.get("l4t"):
        problems.append("the target is a Jetson, this machine is not (no /etc/nv_tegra_release)")
    want_jp = target_device.get("jetpack")
    if want_jp and here.get("jetpack") and here["jetpack"] != want_jp:
        problems.append(f"the target runs JetPack {want_jp}, this Jetson runs JetPack {here['jetpack']} "
                        f"(L4T {here.get('l4t')})")
    return problems


def deferred_reason() -> str | None:
    """Why TensorRT engines cannot be built on this host (None: they can)."""
    if os.environ.get("EDGEVIT_TENSORRT_DEFER"):
        return "EDGEVIT_TENSORRT_DEFER is set"
    ok, why = tensorrt_ready()
    return None if ok else why
