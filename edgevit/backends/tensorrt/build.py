"""TensorRT engine builds: the settings a profile asks for, as Python API calls and as ``trtexec`` lines.

One settings dict drives both, so the command lines in a bundle's on-device kit build the same engine
``edgevit engine build`` would. The precision lives in the ONNX file (explicit Q/DQ for INT8, FP16 types for
FP16), because that is the one form TensorRT 10 and 11 both accept:

* TensorRT 10 (JetPack 6 stays there): a weakly typed network with ``--int8 --fp16`` (INT8 is needed for
  the Q/DQ layers; FP16 lets the layers left unquantized, LayerNorm, Softmax, GELU, run in FP16 instead of
  FP32) or ``--fp16``.
* TensorRT 11: every network is strongly typed and the precision flags are gone (``--int8``/``--fp16`` are
  unknown options to its trtexec), so the types in the ONNX file are the whole story.

Flags follow trtexec 10.3's help (samples/common/sampleOptions.cpp at v10.3.0): values attached with ``=``,
``--memPoolSize=workspace:<N>M``, ``--hardwareCompatibilityLevel=none|ampere+``.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from edgevit.errors import EdgevitError

# trtexec spellings of the profile's hardware_compatibility values, per TensorRT major version.
HW_COMPAT_TRTEXEC = {"10": {"none": None, "ampere_plus": "ampere+"},
                     "11": {"none": None, "ampere_plus": "ampere+", "same_compute_capability": "sameComputeCapability"}}
HW_COMPAT_API = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


def build_settings(profile, precision: str) -> dict:
    """The profile's ``tensorrt:`` section resolved for one precision, checked for combinations TensorRT
    refuses, so the mistake surfaces at build time here rather than on the device."""
    t = dict(profile.tensorrt)
    version, dev = t["version"], profile.device
    where = f"profile {profile.path or profile.name}"
    hw = t["hardware_compatibility"]
    if hw not in HW_COMPAT_TRTEXEC[version]:
        raise EdgevitError(f"{where}: tensorrt.hardware_compatibility {hw!r} needs TensorRT 11 (10.3's trtexec "
                           f"takes none or ampere+); set tensorrt.version: \"11\" or choose ampere_plus")
    if dev["kind"] == "jetson" and (hw != "none" or t["version_compatible"]):
        raise EdgevitError(f"{where}: tensorrt.hardware_compatibility/version_compatible are for discrete GPUs; "
                           f"Jetson engines are built on the Jetson itself (set none / false)")
    if dev["kind"] == "jetson" and version == "11" and (dev.get("jetpack") or "6").startswith(("5", "6")):
        raise EdgevitError(f"{where}: tensorrt.version \"11\" does not run on JetPack {dev.get('jetpack') or 6} "
                           f"(NVIDIA keeps Jetson Orin on JetPack 6 at TensorRT 10.x); use \"10\"")
    if t["dla_core"] is not None and t["dla_core"] >= max(dev.get("dla_cores", 0), 0):
        raise EdgevitError(f"{where}: tensorrt.dla_core {t['dla_core']} but device.dla_cores is "
                           f"{dev.get('dla_cores', 0)} (AGX Orin has 2, Orin Nano none)")
    if t["dla_core"] is not None and precision == "fp32":
        raise EdgevitError(f"{where}: DLA runs INT8 and FP16 only; precision fp32 cannot use tensorrt.dla_core")
    return {
        "tensorrt_version": version,
        "precision": precision,
        "strongly_typed": version == "11",
        "workspace_mb": t["workspace_mb"],
        "builder_optimization_level": t["builder_optimization_level"],
        "timing_cache": t["timing_cache"],
        "dla_core": t["dla_core"],
        "gpu_fallback": t["gpu_fallback"],
        "hardware_compatibility": hw,
        "version_compatible": t["version_compatible"],
        # DLA engines cannot be refitted: their plans keep their weights whatever strip_weights says.
        "strip_weights": bool(t.get("strip_weights", False)) and t["dla_core"] is None,
    }


def precision_flags(settings: dict) -> list[str]:
    if settings["strongly_typed"]:
        return []  # TensorRT 11: the ONNX types decide; its trtexec has no precision flags at all
    return {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"], "fp32": []}[settings["precision"]]


def trtexec_command(settings: dict, onnx: str, engine: str, timing_cache: str | None) -> list[str]:
    """The trtexec invocation that builds ``engine`` from ``onnx`` with ``settings`` (paths as given)."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", *precision_flags(settings),
           f"--memPoolSize=workspace:{settings['workspace_mb']}M",
           f"--builderOptimizationLevel={settings['builder_optimization_level']}"]
    if settings["timing_cache"] and timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if settings["dla_core"] is not None:
        cmd.append(f"--useDLACore={settings['dla_core']}")
        if settings["gpu_fallback"]:
            cmd.append("--allowGPUFallback")
    hw = HW_COMPAT_TRTEXEC[settings["tensorrt_version"]].get(settings["hardware_compatibility"])
    if hw:
        cmd.append(f"--hardwareCompatibilityLevel={hw}")
    if settings["version_compatible"]:
        cmd.append("--versionCompatible")
    if settings.get("strip_weights"):
        cmd.append("--stripWeights")   # refit with identical weights, from the kit's ONNX at load
    if settings.get("profiles"):
        from edgevit.backends.tensorrt.profiles import trtexec_flags

        cmd += trtexec_flags(settings["profiles"])   # shared weights: one profile per preset
    cmd.append("--skipInference")  # build only: `edgevit engine build` validates and measures afterwards
    return cmd


def shell_line(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


# -- the Python API ----------------------------------------------------------------------------------------

def _logger(trt, verbose: bool):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _builder_config(trt, builder, settings: dict, strongly_typed: bool):
    """The builder config ``trtexec_command(settings, ...)`` spells as flags: workspace, optimization level,
    precision flags (weakly typed only), DLA, hardware and version compatibility."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_mb"] << 20)
    config.builder_optimization_level = settings["builder_optimization_level"]
    if not strongly_typed:
        if settings["precision"] in ("int8", "fp16"):
            config.set_flag(trt.BuilderFlag.FP16)
        if settings["precision"] == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # no calibrator: the scales are the Q/DQ nodes'
    if settings["dla_core"] is not None:
        if builder.num_DLA_cores <= settings["dla_core"]:
            raise EdgevitError(f"tensorrt.dla_core {settings['dla_core']} asked for, this device has "
                               f"{builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings["dla_core"]
        if settings["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if settings["hardware_compatibility"] != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                      HW_COMPAT_API[settings["hardware_compatibility"]])
    if settings["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.get("strip_weights"):
        # What trtexec --stripWeights does: the plan leaves out the weights it may refit, which are
        # identical to the ONNX's (the builder may still fold them); the runner refits them at load.
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    return config


def build_engine_file(onnx_path, engine_path, settings: dict, timing_cache_path=None, verbose: bool = False,
                      log=print) -> dict:
    """Build and serialize one engine with the TensorRT Python API (10.x or 11.x), the same build trtexec
    would do with ``trtexec_command(settings, ...)``. Returns what the build used, for the manifest."""
    import tensorrt as trt

    major = trt.__version__.split(".")[0]
    if major not in ("10", "11"):
        raise EdgevitError(f"TensorRT {trt.__version__} is installed; edgevit builds with TensorRT 10.x or 11.x")
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = major == "11" or settings["strongly_typed"]
    if strongly_typed:
        # Value differs between 10 (1) and 11 (0, deprecated and ignored): always go through the enum.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgevitError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")

    config = _builder_config(trt, builder, settings, strongly_typed)
    if settings.get("profiles"):
        from edgevit.backends.tensorrt.profiles import add_profiles

        add_profiles(builder, network, config, settings["profiles"])

    cache_path = Path(timing_cache_path) if (settings["timing_cache"] and timing_cache_path) else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=True)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if not serialized:
        raise EdgevitError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                           f"(rerun with --verbose for the builder's log)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_suffix(engine_path.suffix + ".tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(engine_path)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - t0
    n = len(settings.get("profiles") or [])
    log(f"[tensorrt] built {engine_path.name} in {seconds:.1f} s (TensorRT {trt.__version__}, "
        f"{'strongly typed' if strongly_typed else 'weakly typed ' + settings['precision']}"
        + (f", {n} optimisation profiles: one per preset" if n else "") + ")")
    return {"tensorrt": trt.__version__, "strongly_typed": strongly_typed, "build_seconds": round(seconds, 2)}
