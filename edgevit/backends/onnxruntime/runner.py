"""ONNX Runtime's runner: one ``InferenceSession`` per engine, the engine's execution providers in order.

Device side: numpy and onnxruntime only. The TensorRT provider's engines are cached per user, out of the
read-only bundle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgevit.backends.base import Runner
from edgevit.errors import EdgevitError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _engine_cache_dir(model_path: Path) -> str:
    # Engines the TensorRT provider builds are tied to this GPU: keep them out of the (read-only) bundle.
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgevit" / "ort-tensorrt"
    path = root / f"{model_path.parent.parent.parent.name}-{model_path.stem}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# The options a bundle may set, which are the ones edgevit writes. Others reach what a bundle must not choose:
# TensorRT plugin or engine-decryption libraries to load, context files to write, caches elsewhere.
PROVIDER_KEYS = {
    "TensorrtExecutionProvider": {"trt_fp16_enable", "trt_int8_enable", "trt_engine_cache_enable",
                                  "trt_timing_cache_enable", "trt_max_workspace_size",
                                  "trt_builder_optimization_level"},
    "CUDAExecutionProvider": {"device_id", "cudnn_conv_algo_search"},
}
SESSION_KEYS = {"session.disable_prepacking"}


def _check_options(path, options: dict, session_config: dict) -> None:
    if not isinstance(options, dict) or not isinstance(session_config, dict):
        raise EdgevitError(f"{path}: provider_options and session_config must be objects")
    for provider, given in options.items():
        allowed = PROVIDER_KEYS.get(provider)
        if allowed is None or not isinstance(given, dict) or not set(given) <= allowed:
            extra = sorted(set(given) - (allowed or set())) if isinstance(given, dict) else given
            raise EdgevitError(f"{path}: provider option(s) {provider} {extra} are not ones edgevit sets "
                               f"({ {p: sorted(k) for p, k in PROVIDER_KEYS.items()} }); an engine record may "
                               f"not choose them")
    if unknown := sorted(set(session_config) - SESSION_KEYS):
        raise EdgevitError(f"{path}: session_config {unknown} is not one edgevit sets ({sorted(SESSION_KEYS)}); an "
                           f"engine record may not choose it")


class OrtRunner(Runner):
    def __init__(self, path, providers=None, threads: int = 0, options: dict | None = None,
                 session_config: dict | None = None):
        import onnxruntime as ort

        _check_options(path, options or {}, session_config or {})
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(key, str(value))
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        options = dict(options or {})
        if "TensorrtExecutionProvider" in providers:
            cache = _engine_cache_dir(Path(path))
            options["TensorrtExecutionProvider"] = {**options.get("TensorrtExecutionProvider", {}),
                                                    "trt_engine_cache_path": cache, "trt_timing_cache_path": cache}
        self.session = ort.InferenceSession(str(path), opts, providers=providers,
                                            provider_options=[options.get(p, {}) for p in providers])
        self.providers = self.session.get_providers()
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.input_shape, self.output_shape = i.name, tuple(i.shape), tuple(o.shape)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe, so one session serves every caller.
        return self.session.run(None, {self.input_name: batch})[0]

    def run(self, feeds: dict) -> np.ndarray:
        names = self._names = getattr(self, "_names", None) or {i.name for i in self.session.get_inputs()}
        return self.session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
