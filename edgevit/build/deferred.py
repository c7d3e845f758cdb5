"""Engines built later, on the target device: the candidate pipeline run in two halves.

A backend whose engines are tied to the device that builds them (TensorRT) names the module that finishes
them there (``Backend.device_build``). The build runs the first half here: every candidate is built into
what the device builds from and checked on this host's reference runtime. Then that module writes what the
device needs (``defer``), builds the engines at once where this host is the device, records the result in
the manifest (``record_device_build``) and says what is left to do (``pending_note``). On the device,
``edgevit engine build`` runs the second half with the same ``pipeline.run_candidate`` and ``choose``.

The module provides ``DeviceBuild`` (how it builds: its ``measure``, ``interval_s`` and ``log``), ``defer(backend,
bundle_dir, entries, profile, checks, how) -> result``, ``record_device_build(manifest, summary, reason)``
and ``pending_note(manifest, result, bundle, target) -> str | None``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from edgevit.build.pipeline import Checks
from edgevit.manifest import Manifest, PresetEntry


@dataclass
class Deferred:
    """A backend's engines left to (or built by) its device build, with what ``defer`` returned."""

    module: object
    result: dict

    def record(self, manifest: Manifest) -> None:
        self.module.record_device_build(manifest, self.result["summary"], self.result["reason"])

    def pending(self, manifest: Manifest, bundle: Path, target: str) -> str | None:
        return self.module.pending_note(manifest, self.result, Path(bundle), target)


def defer(backends, bundle_dir: Path, entries: list[PresetEntry], profile, checks: Checks,
          opts) -> Deferred | None:
    """The first of ``backends`` whose engines are built on the device: its device build's first half
    (``opts``: the build's options, for ``measure`` and ``log``). None where every engine is built here."""
    backend = next((b for b in backends if b.device_build), None)
    if backend is None:
        return None
    module = importlib.import_module(backend.device_build)
    how = module.DeviceBuild(measure=opts.measure, interval_s=profile.request_interval_s, log=opts.log)
    return Deferred(module, module.defer(backend, Path(bundle_dir), entries, profile, checks, how))
