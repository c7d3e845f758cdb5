"""Nothing leaves the machine: the telemetry of the libraries edgevit drives is off in edgevit's processes.

What they would send, left alone (seen with their versions of December 2026):

* OpenVINO's model converter (``openvino.convert_model``) and NNCF send usage events to Google Analytics
  through ``openvino_telemetry``, which also writes a client id under ``~/intel``. Offline, its sender can
  block in a DNS look-up and hold the process's exit.
* ONNX Runtime (1.32 on Linux) sends session events to Microsoft's 1DS collector
  (``mobile.events.data.microsoft.com``), from the build and from every device program that loads an ONNX
  Runtime engine. ``onnxruntime.disable_telemetry_events()`` does not stop it; ``ORT_DISABLE_TELEMETRY=1``
  in the environment before ``onnxruntime`` is imported does.

``import edgevit`` turns all of it off (``off``): ``openvino_telemetry`` cannot be imported, so OpenVINO
(whose own ``import openvino`` imports it) and NNCF fall back to their no-op stubs; ``ORT_DISABLE_TELEMETRY=1`` is set, for this process and the
children it starts. Nothing is written into the user's home. ``EDGEVIT_TELEMETRY=1`` leaves the libraries
as they would be (their own consent rules then apply).
"""

from __future__ import annotations

import logging
import os
import sys

OPT_IN = "EDGEVIT_TELEMETRY"
_OV_TELEMETRY = "openvino_telemetry"


def opted_in() -> bool:
    return os.environ.get(OPT_IN, "").strip().lower() in ("1", "true", "yes", "on")


def off() -> None:
    """Turn the libraries' telemetry off in this process, unless the user opted in. Imports nothing heavy."""
    if opted_in():
        return
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    if sys.modules.get("onnxruntime") is not None:
        # ONNX Runtime reads the variable when it is imported: a program that imported it first keeps it on.
        logging.getLogger("edgevit").warning(
            "onnxruntime was imported before edgevit, so its telemetry could not be turned off; import edgevit "
            "first, or set ORT_DISABLE_TELEMETRY=1 in the environment")
    tm = sys.modules.get(_OV_TELEMETRY)
    if tm is None:
        sys.modules[_OV_TELEMETRY] = None     # an import of it raises ImportError: the tools use their stubs
    else:
        _decline(tm)


def _decline(tm) -> None:
    """openvino_telemetry was imported before edgevit (``import openvino`` imports it, counts a use in
    ``~/intel/stats`` and queues an event): its singleton stops sending, what is still queued is dropped,
    and one made later finds no consent. What the import already sent is gone: the warning says so."""
    logging.getLogger("edgevit").warning(
        "openvino was imported before edgevit: its import may already have sent a usage event; import edgevit "
        "first to send nothing")
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

        OptInChecker.check = lambda self, *a, **k: ConsentCheckResult.DECLINED
        instance = getattr(tm.Telemetry, "_SingletonMetaClass__single_instance", None)
        if instance is not None:
            instance.consent = False
            instance.sender.executor.shutdown(wait=False, cancel_futures=True)
    except Exception as e:   # a layout this edgevit does not know: say so rather than pretend
        logging.getLogger("edgevit").warning(f"could not turn OpenVINO telemetry off ({e}); import edgevit "
                                             f"before openvino and nncf")
