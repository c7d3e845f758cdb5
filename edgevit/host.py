"""Facts about this host and the tools installed, for manifests and reports (no heavy imports)."""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from importlib import metadata

TOOLS = ("torch", "onnx", "onnxslim", "numpy")   # the builder's own; each backend adds its own (Backend.tools)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd")


@lru_cache(maxsize=1)
def _tool_versions() -> tuple:
    from edgevit.backends.base import backend_names, get_backend

    names = list(TOOLS)
    for b in backend_names():
        names += [t for t in get_backend(b).tool_names() if t not in names]
    return (("edgevit", _version("edgevit")), ("python", platform.python_version()),
            *((name, _version(name)) for name in names))


def tool_versions() -> dict:
    """Installed versions (read once per process: they key every cache entry and manifest)."""
    return dict(_tool_versions())


def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in CPU_FLAGS if f in flags]}


def host_info() -> dict:
    return {"platform": sys.platform, "os": platform.platform(), "cpu": cpu_info()}


def matches_target(profile) -> tuple[bool, str]:
    """Whether latencies measured here say something about the target device."""
    dev = profile.device
    arch = platform.machine()
    if dev["kind"] != "cpu":
        return False, f"target is a {dev['kind']} device; this host measures its CPU only"
    if dev["arch"] != arch:
        return False, f"target is {dev['arch']}, this host is {arch}"
    return True, ""
