"""GPU targets: Q/DQ kits validated on ONNX Runtime CPU, trtexec lines, the on-device build and its guard.

TensorRT cannot run on the CI machine. What runs everywhere: the kit a jetson-orin / desktop-gpu build
writes, the trtexec lines checked against the flags TensorRT 10.3 documents, and the on-device build driven
end to end with the TensorRT calls replaced by ONNX Runtime on the same files (a stand-in `trtexec` that
rejects what 10.3's would). The real-TensorRT tests at the bottom run only where tensorrt and a GPU exist.
"""

import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgevit
from edgevit.backends.tensorrt.build import build_settings, trtexec_command
from edgevit.bundle import read_manifest, verify_files
from edgevit.errors import EdgevitError
from edgevit.backends.tensorrt.gpu import engine_mismatches, l4t_release, target_mismatches, tensorrt_ready
from edgevit.build.profiles import load_profile, parse_profile
from pinned import ort_session

TWO = ["r32-k1", "r16-k0.5"]

# Flags of trtexec 10.3's help (NVIDIA/TensorRT v10.3.0, samples/common/sampleOptions.cpp: BuildOptions::help,
# InferenceOptions::help, ReportingOptions::help, SystemOptions::help). Values are attached with '='.
TRTEXEC_10_3 = set("""
onnx minShapes optShapes maxShapes minShapesCalib optShapesCalib maxShapesCalib inputIOFormats outputIOFormats
memPoolSize profilingVerbosity avgTiming refit stripWeights stripAllWeights weightless versionCompatible vc
pluginInstanceNorm pi useRuntime leanDLLPath excludeLeanRuntime sparsity noTF32 fp16 bf16 int8 fp8 int4 best
stronglyTyped directIO precisionConstraints layerPrecisions layerOutputTypes layerDeviceTypes calib safe
buildDLAStandalone allowGPUFallback consistency restricted saveEngine loadEngine getPlanVersionOnly
tacticSources noBuilderCache noCompilationCache errorOnTimingCacheMiss timingCacheFile preview
builderOptimizationLevel hardwareCompatibilityLevel runtimePlatform tempdir tempfileControls maxAuxStreams
profile calibProfile allowWeightStreaming markDebug shapes loadInputs iterations warmUp duration sleepTime
idleTime infStreams exposeDMA noDataTransfers useManagedMemory useSpinWait threads useCudaGraph timeDeserialize
timeRefit separateProfileRun skipInference persistentCacheRatio useProfile allocationStrategy saveDebugTensors
weightStreamingBudget verbose avgRuns percentile dumpRefit dumpOutput dumpRawBindingsToFile dumpProfile
dumpLayerInfo dumpOptimizationProfile exportTimes exportOutput exportProfile exportLayerInfo device useDLACore
staticPlugins dynamicPlugins setPluginsToSerialize ignoreParsedPluginLibs
""".split())
VALUE_FLAGS = {"onnx", "saveEngine", "memPoolSize", "builderOptimizationLevel", "timingCacheFile", "useDLACore",
               "hardwareCompatibilityLevel"}
# TensorRT 11's trtexec no longer parses the precision flags ("Unknown option"): all networks are strongly typed.
REMOVED_IN_11 = {"fp16", "bf16", "int8", "fp8", "int4", "best", "calib", "precisionConstraints", "layerPrecisions",
                 "layerOutputTypes"}


def check_trtexec_10_3(cmd: list[str]) -> dict:
    """Parse a trtexec line the way 10.3's does; fail on anything it would reject."""
    assert cmd[0].endswith("trtexec")
    flags = {}
    for arg in cmd[1:]:
        m = re.fullmatch(r"--([A-Za-z0-9]+)(?:=(.*))?", arg)
        assert m, f"{arg!r} is not a --flag[=value] argument"
        name, value = m.groups()
        assert name in TRTEXEC_10_3, f"--{name} is not a trtexec 10.3 flag"
        assert (value is not None) == (name in VALUE_FLAGS), f"--{name}: value given/missing"
        flags[name] = value
    assert re.fullmatch(r"workspace:\d+M", flags["memPoolSize"])
    assert 0 <= int(flags["builderOptimizationLevel"]) <= 5
    assert flags.get("hardwareCompatibilityLevel", "none") in ("none", "ampere+")
    if "stronglyTyped" in flags:  # "Use of specific builder precision flags ... with this option is not allowed"
        assert not {"int8", "fp16", "best", "bf16"} & set(flags)
    if "allowGPUFallback" in flags:
        assert "useDLACore" in flags, "--allowGPUFallback only acts with --useDLACore"
    if "useDLACore" in flags:
        assert {"int8", "fp16"} & set(flags), "DLA runs INT8 or FP16 only"
    return flags


# -- trtexec lines and settings ----------------------------------------------------------------------------

def test_jetson_orin_trtexec_line_uses_only_trtexec_10_3_flags():
    s = build_settings(load_profile("jetson-orin"), "int8")
    cmd = trtexec_command(s, "kit/tensorrt/r32-k1.int8.onnx", "engines/tensorrt/r32-k1.int8.plan", "kit/t.cache")
    flags = check_trtexec_10_3(cmd)
    assert cmd == ["trtexec", "--onnx=kit/tensorrt/r32-k1.int8.onnx", "--saveEngine=engines/tensorrt/r32-k1.int8.plan",
                   "--int8", "--fp16", "--memPoolSize=workspace:4096M", "--builderOptimizationLevel=3",
                   "--timingCacheFile=kit/t.cache", "--stripWeights", "--skipInference"]
    assert "useDLACore" not in flags and "hardwareCompatibilityLevel" not in flags
    assert "--stripWeights" not in trtexec_command(build_settings(_variant("jetson-orin", strip_weights=False), "int8"),
                                                   "a.onnx", "a.plan", None)


@pytest.mark.parametrize("profile,precision", [("jetson-orin", "int8"), ("jetson-orin-nano", "int8"),
                                               ("desktop-gpu", "fp16"), ("desktop-gpu", "int8"),
                                               ("jetson-orin", "fp32")])
def test_every_gpu_profile_gives_a_valid_10_3_line(profile, precision):
    s = build_settings(load_profile(profile), precision)
    flags = check_trtexec_10_3(trtexec_command(s, "a.onnx", "a.plan", "t.cache"))
    assert flags["memPoolSize"] == f"workspace:{s['workspace_mb']}M"
    expected = {"int8": {"int8", "fp16"}, "fp16": {"fp16"}, "fp32": set()}[precision]
    assert {"int8", "fp16"} & set(flags) == expected
    if profile == "desktop-gpu":
        assert flags["hardwareCompatibilityLevel"] == "ampere+"


def _variant(base: str, **tensorrt):
    import yaml

    from edgevit.build.profiles import PROFILE_DIR

    raw = yaml.safe_load((PROFILE_DIR / f"{base}.yaml").read_text())
    raw["tensorrt"] = {**raw["tensorrt"], **tensorrt}
    return parse_profile(raw, f"{base}-variant.yaml")


def test_dla_line_and_tensorrt_11_line():
    s = build_settings(_variant("jetson-orin", dla_core=1), "int8")
    flags = check_trtexec_10_3(trtexec_command(s, "a.onnx", "a.plan", None))
    assert flags["useDLACore"] == "1" and "allowGPUFallback" in flags and "timingCacheFile" not in flags
    assert "stripWeights" not in flags and not s["strip_weights"]   # TensorRT cannot refit DLA engines
    s11 = build_settings(_variant("desktop-gpu", version="11", hardware_compatibility="same_compute_capability"),
                         "int8")
    cmd = trtexec_command(s11, "a.onnx", "a.plan", "t.cache")
    names = {a[2:].split("=")[0] for a in cmd[1:]}
    assert s11["strongly_typed"] and not names & REMOVED_IN_11   # the precision lives in the ONNX file
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in cmd


@pytest.mark.parametrize("tensorrt,match", [
    ({"hardware_compatibility": "ampere_plus"}, "Jetson engines are built on the Jetson"),
    ({"version": "11"}, "does not run on JetPack 6"),
    ({"dla_core": 1, "version": "10"}, None),
])
def test_settings_refuse_what_tensorrt_refuses(tensorrt, match):
    p = _variant("jetson-orin", **tensorrt)
    if match is None:
        assert build_settings(p, "int8")["dla_core"] == 1
        with pytest.raises(EdgevitError, match="DLA runs INT8 and FP16 only"):
            build_settings(p, "fp32")
    else:
        with pytest.raises(EdgevitError, match=match):
            build_settings(p, "int8")
    with pytest.raises(EdgevitError, match="dla_core 0 but device.dla_cores is 0"):
        build_settings(_variant("jetson-orin-nano", dla_core=0), "int8")
    with pytest.raises(EdgevitError, match="needs TensorRT 11"):
        build_settings(_variant("desktop-gpu", hardware_compatibility="same_compute_capability"), "fp16")


def _linear_onnx(path, w: np.ndarray, b: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_kit_stores_each_weight_once_and_every_reader_still_gets_it(tmp_path):
    """Presets built from one set of weights: the kit's ONNX files point into one weights file where each
    distinct tensor is stored once, and ONNX Runtime (as TensorRT's parser and refitter) reads the same values."""
    from edgevit.backends.tensorrt.kit import WEIGHTS_FILE, share_weights

    rng = np.random.default_rng(0)
    w, w2 = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    models = {"kit/tensorrt/a.onnx": (w, np.zeros(64, np.float32)), "kit/tensorrt/b.onnx": (w, np.ones(64, np.float32)),
              "kit/tensorrt/c.onnx": (w2, np.ones(64, np.float32))}
    for rel, (wi, bi) in models.items():
        _linear_onnx(tmp_path / rel, wi, bi)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    run = lambda rel: ort_session(tmp_path / rel).run(None, {"x": x})[0]  # noqa: E731
    before = {rel: run(rel) for rel in models}
    for attempt in range(2):                # a second pass (a rebuilt kit) gives the same file
        stats = share_weights(tmp_path, list(models))
        assert stats["tensors"] == 2 and stats["bytes_in_onnx"] == 3 * w.nbytes
        assert (tmp_path / WEIGHTS_FILE).stat().st_size == 2 * w.nbytes    # w once, w2 once; biases stay inline
        for rel in models:
            np.testing.assert_array_equal(run(rel), before[rel])
            assert (tmp_path / rel).stat().st_size < 1024 < w.nbytes     # the graph and its small constants


# -- device facts and the portability guard ----------------------------------------------------------------

ORIN = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "l4t": "36.4.3", "jetpack": "6"}


def test_l4t_release_parsing(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n")
    assert l4t_release(f) == "36.4.3"
    assert l4t_release(tmp_path / "missing") is None


def test_engine_mismatches_name_what_differs():
    assert engine_mismatches(ORIN, ORIN) == []
    newer = {**ORIN, "tensorrt": "10.7.0", "l4t": "36.4.4"}
    problems = engine_mismatches(ORIN, newer)
    assert any("TensorRT 10.3.0 built it, this device has TensorRT 10.7.0" in p for p in problems)
    assert any("L4T 36.4.3" in p for p in problems)
    rtx = {"tensorrt": "10.3.0", "gpu": "RTX 4090", "compute_capability": "8.9", "l4t": None, "jetpack": None}
    a100 = {**rtx, "gpu": "A100", "compute_capability": "8.0"}
    assert any("compute capability 8.9" in p for p in engine_mismatches(rtx, a100))
    assert engine_mismatches(rtx, a100, {"hardware_compatibility": "ampere_plus"}) == []
    later = {**rtx, "tensorrt": "10.5.0"}
    assert engine_mismatches(rtx, later, {"version_compatible": True}) == []
    assert engine_mismatches(later, rtx, {"version_compatible": True})   # never backwards
    assert engine_mismatches(ORIN, {**ORIN, "tensorrt": None, "compute_capability": None})


def test_target_mismatches():
    orin = load_profile("jetson-orin").device
    assert target_mismatches(orin, ORIN) == []
    desktop = {"tensorrt": "10.3.0", "gpu": "H100", "compute_capability": "9.0", "l4t": None, "jetpack": None}
    problems = target_mismatches(orin, desktop)
    assert any("compute capability 8.7" in p for p in problems) and any("not" in p and "Jetson" in p for p in problems)


def check_tensorrt_qdq(path):
    """TensorRT's explicit-quantization form: FP32 weights behind Q/DQ, INT8 zero points, no INT32 bias,
    LayerNorm and Softmax fed unquantized."""
    qdq = onnx.load(str(path))
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") == ops.count("QuantizeLinear")
    init = {i.name: i for i in qdq.graph.initializer}
    for n in qdq.graph.node:
        if n.op_type == "DequantizeLinear":
            assert n.input[0] not in init, "weights must stay FP32 behind a QuantizeLinear (AddQDQPairToWeight)"
        if n.op_type == "QuantizeLinear":
            assert init[n.input[2]].data_type == onnx.TensorProto.INT8
            assert not np.any(onnx.numpy_helper.to_array(init[n.input[2]])), "symmetric: zero points are 0"
    produced_by = {o: n.op_type for n in qdq.graph.node for o in n.output}
    for n in qdq.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert produced_by.get(n.input[0]) != "DequantizeLinear", n.name


def test_tensorrt_qdq_form(quick_checkpoint, tmp_path):
    import torch

    from edgevit.build.checkpoints import load_checkpoint
    from edgevit.build.export import export_preset
    from edgevit.backends.onnxruntime.quantize import quantize_onnxruntime
    from edgevit.backends.tensorrt.kit import tensorrt_qdq

    model = load_checkpoint(quick_checkpoint).model.eval()
    preset = model.preset("r16-k0.5")
    sample = torch.rand(8, 3, 32, 32).numpy()
    export_preset(model, preset, tmp_path / "fp32.onnx", sample)
    info = quantize_onnxruntime(tmp_path / "fp32.onnx", tmp_path / "qdq.onnx", sample, 0, form=tensorrt_qdq())
    assert info["target"] == "tensorrt" and info["per_channel"] and info["symmetric"]
    check_tensorrt_qdq(tmp_path / "qdq.onnx")


# -- the build on a machine without TensorRT ---------------------------------------------------------------

@pytest.fixture(scope="module")
def orin_bundle(quick_checkpoint, tmp_path_factory):
    from edgevit.build.builder import BuildOptions, build

    if tensorrt_ready()[0]:
        pytest.skip("TensorRT and a GPU are here: the build finishes the engines itself (tested below)")
    base = tmp_path_factory.mktemp("orin")
    logs = []
    out = build(BuildOptions(target="jetson-orin", checkpoint=str(quick_checkpoint), presets=TWO,
                             out=str(base / "bundle"), cache_dir=str(base / "cache"), log=logs.append))
    return out, logs


def test_jetson_build_writes_a_validated_kit(orin_bundle):
    out, logs = orin_bundle
    m = read_manifest(out).to_dict()
    verify_files(out, m)
    assert m["backend"] == "tensorrt" and m["backends"] == ["tensorrt", "onnxruntime"]
    assert m["device_build"]["status"] == "pending" and m["device_build"]["pending_presets"] == TWO
    assert "tensorrt" in m["device_build"]["reason"]
    for p in m["presets"]:
        t = p["engines"]["tensorrt"]
        assert t["status"] == "pending-device-build" and t["validated_with"].startswith("onnxruntime CPU")
        if t["precision"] == "int8":   # the quick checkpoint is barely trained: a preset may fall back
            assert t["gate"]["passed"], (p["name"], t["gate"])     # Q/DQ on ORT CPU vs torch FP32
            check_tensorrt_qdq(out / t["engine"]["file"])
        else:   # not measured here: the preference order decides, so an FP32 engine means INT8 failed the gate
            assert t["precision"] == "fp32" and t["fallback"]["reason"]
            assert all(not c["passed"] and c["reason"] for c in t["candidates"] if c["precision"] == "int8")
        line = t["engine"]["settings"]["trtexec"]
        assert '"$TRTEXEC" ' + line.split(" ", 1)[1] in (out / "kit" / "build_engines.sh").read_text()
    readme = (out / "kit" / "README.md").read_text()
    assert "edgevit engine build" in readme and "compute capability 8.7" in readme
    assert any("NOT DONE" in line and "edgevit engine build" in line for line in logs)
    x, y, refs = __import__("edgevit.backends.tensorrt.device_build", fromlist=["x"]).read_validation(out)
    assert len(x) == len(y) == 360 and set(refs) == set(TWO)
    # One weights file for the kit: every distinct tensor stored once, whatever preset or candidate uses it.
    assert any(line.startswith("[kit]") and "kit/tensorrt/weights.bin stores them once" in line for line in logs)
    blob, seen = (out / "kit" / "tensorrt" / "weights.bin").read_bytes(), {}
    for f in (out / "kit" / "tensorrt").glob("*.onnx"):
        for t in onnx.load(str(f), load_external_data=False).graph.initializer:
            ext = {e.key: e.value for e in t.external_data}
            if ext:
                start, length = int(ext["offset"]), int(ext["length"])
                seen.setdefault(blob[start:start + length], set()).add(start)
    assert seen and all(len(starts) == 1 for starts in seen.values())


def test_pending_engines_refuse_to_load_and_onnxruntime_still_runs(orin_bundle):
    out, _ = orin_bundle
    with pytest.raises(EdgevitError, match="pending-device-build.*edgevit engine build"):
        edgevit.load(out)
    with edgevit.load(out, backend="onnxruntime") as rt:
        assert rt.predict(np.zeros((2, 3, 32, 32), np.float32), preprocessed=True).indices.shape == (2,)


def test_engine_build_without_tensorrt_says_where_to_run(orin_bundle):
    from click.testing import CliRunner

    from edgevit.cli import cli

    r = CliRunner().invoke(cli, ["engine", "build", str(orin_bundle[0])])
    assert r.exit_code == 2 and "needs TensorRT and a CUDA GPU" in r.output and "jetson-orin" in r.output


# -- the on-device build, with ONNX Runtime standing in for the TensorRT calls ------------------------------

class OrtAsTensorRT:
    """Runs the 'engine' (a copy of the ONNX it was built from) with ONNX Runtime. A weight-stripped one is
    'refitted' from the kit ONNX it names: that file and the kit's weights file are what the device reads."""

    def __init__(self, path, settings, refit_onnx=None):
        from edgevit.backends.onnxruntime.runner import OrtRunner

        assert (refit_onnx is not None) == bool(settings.get("strip_weights"))
        self._r = OrtRunner(refit_onnx or path, ["CPUExecutionProvider"])
        self.input_shape, self.output_shape = self._r.input_shape, self._r.output_shape

    def infer(self, x):
        return self._r.infer(x)

    def close(self):
        pass


FAKE_TRTEXEC = r'''#!{python}
import re, shutil, sys
KNOWN = set({known!r})
VALUES = set({values!r})
args = dict()
for a in sys.argv[1:]:
    m = re.fullmatch(r"--([A-Za-z0-9]+)(?:=(.*))?", a)
    if not m or m.group(1) not in KNOWN or (m.group(2) is not None) != (m.group(1) in VALUES):
        print("Unknown option: " + a); sys.exit(1)
    args[m.group(1)] = m.group(2)
shutil.copyfile(args["onnx"], args["saveEngine"])
'''


@pytest.fixture
def fake_device(monkeypatch, tmp_path):
    import edgevit.backends.tensorrt as trt_backend
    import edgevit.backends.tensorrt.build as trt_build
    import edgevit.backends.tensorrt.runner as trt_runner
    import edgevit.backends.tensorrt.gpu as gpu

    state = {"info": dict(ORIN), "builds": []}
    monkeypatch.setattr(gpu, "device_info", lambda: dict(state["info"]))
    monkeypatch.setattr(gpu, "tensorrt_ready", lambda: (True, ""))
    for module in (trt_backend, trt_runner):   # the backend's load and the device build's validation
        monkeypatch.setattr(module, "TensorRTRunner", OrtAsTensorRT)

    def fake_build(onnx_path, engine_path, settings, cache=None, verbose=False, log=print):
        state["builds"].append(settings["precision"])
        Path(engine_path).parent.mkdir(parents=True, exist_ok=True)
        Path(engine_path).write_bytes(Path(onnx_path).read_bytes())
        return {"tensorrt": state["info"]["tensorrt"], "strongly_typed": False, "build_seconds": 0.0}

    monkeypatch.setattr(trt_build, "build_engine_file", fake_build)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "trtexec"
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable, known=sorted(TRTEXEC_10_3), values=sorted(VALUE_FLAGS)))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return state


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("use_trtexec", [False, True])
def test_engine_build_on_the_device_validates_and_records(orin_bundle, fake_device, tmp_path, use_trtexec):
    from edgevit.backends.tensorrt.device_build import DeviceBuild, engine_build

    bundle = _copy(orin_bundle[0], tmp_path / "bundle")
    before = read_manifest(bundle).to_dict()
    logs = []
    summary = engine_build(bundle, how=DeviceBuild(use_trtexec=use_trtexec, log=logs.append))
    assert summary["built"] == 2 and summary["failed"] == []
    precisions = [p["engines"]["tensorrt"]["precision"] for p in before["presets"]]
    ids = [p["engines"]["tensorrt"]["chosen"]["id"] for p in before["presets"]]
    assert fake_device["builds"] == ([] if use_trtexec else precisions)
    m = read_manifest(bundle).to_dict()
    verify_files(bundle, m)
    import jsonschema

    from edgevit.manifest import schema

    jsonschema.validate(json.loads((bundle / "manifest.json").read_text()), schema())   # as `engine build` wrote it
    assert m["device_build"]["status"] == "done" and m["device_build"]["built_on"]["l4t"] == "36.4.3"
    assert m["tools"]["tensorrt"] == "10.3.0"
    for p, old, cid in zip(m["presets"], before["presets"], ids):
        t = p["engines"]["tensorrt"]
        assert t["status"] == "ok" and t["engine"]["file"] == f"engines/tensorrt/{p['name']}.{cid}.plan"
        assert t["engine"]["settings"]["built_on"] == ORIN and t["latency_ms"]["p50"] > 0
        assert t["gate"]["passed"] and t["kit_validation"]["agreement"] == old["engines"]["tensorrt"]["agreement"]
        assert t["engine"]["extra_files"] == [f"kit/tensorrt/{p['name']}.{cid}.onnx", "kit/tensorrt/weights.bin"]
        assert t["engine"]["settings"]["strip_weights"]
        assert t["chosen"]["precision"] == t["precision"] and t["device_attempts"][0]["floor"]
    with edgevit.load(bundle) as rt:                      # the guard passes on the device it was built on
        assert rt.backend == "tensorrt" and len(rt.presets) == 2
    assert engine_build(bundle, how=DeviceBuild(log=logs.append))["built"] == 0 and "nothing to build" in logs[-1]

    fake_device["info"] = {**ORIN, "tensorrt": "10.7.0", "l4t": "36.5.0"}   # a JetPack upgrade
    with pytest.raises(EdgevitError, match=r"TensorRT 10\.3\.0 built it, this device has TensorRT 10\.7\.0.*"
                                           r"edgevit engine build .* --force"):
        edgevit.load(bundle)
    assert engine_build(bundle, force=True, presets=["r32-k1"], how=DeviceBuild(log=logs.append))["built"] == 1
    m = read_manifest(bundle).to_dict()
    assert m["presets"][0]["engines"]["tensorrt"]["engine"]["settings"]["built_on"]["tensorrt"] == "10.7.0"


def test_a_plan_that_runs_its_own_code_loads_only_when_the_user_trusts_it(orin_bundle, fake_device, tmp_path,
                                                                          monkeypatch):
    from click.testing import CliRunner

    from edgevit.backends.tensorrt.device_build import DeviceBuild, engine_build
    from edgevit.cli import cli

    monkeypatch.delenv("EDGEVIT_TRUST_ENGINE_CODE", raising=False)
    bundle = _copy(orin_bundle[0], tmp_path / "bundle")
    engine_build(bundle, how=DeviceBuild(log=lambda m: None))
    d = json.loads((bundle / "manifest.json").read_text())
    for p in d["presets"]:        # as a desktop-gpu build with tensorrt.version_compatible writes it
        p["engines"]["tensorrt"]["engine"]["settings"]["version_compatible"] = True
    (bundle / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(EdgevitError, match=r"version-compatible TensorRT engine: it runs code it carries.*"
                                           r"EDGEVIT_TRUST_ENGINE_CODE=1"):
        edgevit.load(bundle, backend="tensorrt")
    r = CliRunner().invoke(cli, ["bench", str(bundle), "--backends", "tensorrt", "--no-baseline", "--iterations", "1",
                                 "--repeats", "1", "--no-plot", "--json", str(tmp_path / "b.json"),
                                 "--md", str(tmp_path / "b.md")])
    assert r.exit_code != 0 and "EDGEVIT_TRUST_ENGINE_CODE=1" in r.output, r.output
    monkeypatch.setenv("EDGEVIT_TRUST_ENGINE_CODE", "1")
    with edgevit.load(bundle, backend="tensorrt") as rt:
        assert rt.backend == "tensorrt" and len(rt.presets) == 2
    d["presets"][0]["engines"]["tensorrt"]["engine"]["settings"]["host_code_allowed"] = True   # not a bundle's call
    (bundle / "manifest.json").write_text(json.dumps(d))
    monkeypatch.delenv("EDGEVIT_TRUST_ENGINE_CODE")
    with pytest.raises(EdgevitError, match="host_code_allowed"):
        edgevit.load(bundle, backend="tensorrt")


def test_the_trust_flag_is_the_users_to_give():
    import os

    from click.testing import CliRunner

    from edgevit.cli import cli

    for cmd in ("bench", "map", "simulate"):
        assert "--trust-engine-code" in CliRunner().invoke(cli, [cmd, "--help"]).output
    assert os.environ.get("EDGEVIT_TRUST_ENGINE_CODE") is None      # --help alone sets nothing


def test_engine_build_refuses_the_wrong_gpu(orin_bundle, fake_device, tmp_path):
    from edgevit.backends.tensorrt.device_build import engine_build

    bundle = _copy(orin_bundle[0], tmp_path / "bundle")
    fake_device["info"] = {"tensorrt": "10.3.0", "gpu": "H100", "compute_capability": "9.0", "l4t": None,
                           "jetpack": None}
    manifest_before = (bundle / "manifest.json").read_text()
    with pytest.raises(EdgevitError, match="not the bundle's target jetson-orin.*compute capability 8.7.*--any-device"):
        engine_build(bundle)
    assert (bundle / "manifest.json").read_text() == manifest_before


def test_engine_that_fails_on_the_device_is_not_marked_ok(orin_bundle, fake_device, tmp_path, monkeypatch):
    import edgevit.backends.tensorrt as trt_backend
    import edgevit.backends.tensorrt.runner as trt_runner
    from edgevit.backends.tensorrt.device_build import DeviceBuild, engine_build

    class Broken(OrtAsTensorRT):
        def infer(self, x):
            return np.roll(super().infer(x), 1, axis=-1)   # a wrong engine: every prediction shifts

    for module in (trt_backend, trt_runner):
        monkeypatch.setattr(module, "TensorRTRunner", Broken)
    bundle = _copy(orin_bundle[0], tmp_path / "bundle")
    summary = engine_build(bundle, presets=["r16-k0.5"], how=DeviceBuild(measure=False, log=lambda m: None))
    assert summary["failed"] == ["r16-k0.5"]
    m = read_manifest(bundle).to_dict()
    t = {p["name"]: p["engines"]["tensorrt"] for p in m["presets"]}
    assert t["r16-k0.5"]["status"] == "failed-validation" and "agreement" in t["r16-k0.5"]["reason"]
    assert t["r32-k1"]["status"] == "pending-device-build"
    assert not list((bundle / "engines").glob("tensorrt/r16-k0.5.*"))


# -- shared weights: one engine, an optimisation profile per preset ----------------------------------------

FOUR = ["r32-k1", "r16-k0.5", "r24-k0.7", "r16-k1"]


@pytest.fixture(scope="module")
def orin_shared(quick_checkpoint, tmp_path_factory):
    from edgevit.build.builder import BuildOptions, build

    if tensorrt_ready()[0]:
        pytest.skip("TensorRT and a GPU are here: the build finishes the engine itself")
    base = tmp_path_factory.mktemp("orin-shared")
    logs = []
    out = build(BuildOptions(target="jetson-orin", checkpoint=str(quick_checkpoint), presets=FOUR,
                             shared_weights=True, out=str(base / "bundle"), cache_dir=str(base / "cache"),
                             log=logs.append))
    return out, logs


def test_shared_kit_has_one_engine_with_a_profile_per_preset(orin_shared):
    from edgevit.models.registry import create_model

    out, _ = orin_shared
    m = read_manifest(out).to_dict()
    verify_files(out, m)
    model = create_model("supervit-nano")
    settings = [p["engines"]["tensorrt"]["engine"]["settings"] for p in m["presets"]]
    assert {p["engines"]["tensorrt"]["engine"]["file"] for p in m["presets"]} == {"kit/tensorrt/shared.fp16.onnx"}
    assert {s["engine"] for s in settings} == {"engines/tensorrt/shared.fp16.plan"}
    profiles = settings[0]["profiles"]
    assert all(s["profiles"] == profiles for s in settings)
    # The profile list is the preset list: profile i is the preset whose binding says branch i, pinned to
    # exactly the shapes that preset feeds (min = opt = max).
    assert [p["preset"] for p in profiles] == [p["name"] for p in m["presets"]] == FOUR
    for i, (p, s) in enumerate(zip(profiles, settings)):
        assert s["shared"]["branch"] == i
        r, k = model.preset(p["preset"]).resolution, model.preset(p["preset"]).keep_rate
        counts = model.token_counts(r, k)
        kept = [counts[j] - 1 for j in model.prune_at]
        assert p["shapes"] == {"input": [1, 3, 32, 32], "keep1": [kept[0]], "keep2": [kept[1]], "keep3": [kept[2]],
                               "pos_embed": [1, (r // model.patch_size) ** 2 + 1, model.embed_dim], "size": [r]}
    line = settings[0]["trtexec"]
    assert [int(x) for x in re.findall(r"--profile=(\d+)", line)] == list(range(len(FOUR)))
    assert "--minShapes=input:1x3x32x32,keep1:9,keep2:5,keep3:3,pos_embed:1x17x96,size:16" in line
    script = (out / "kit" / "build_engines.sh").read_text()
    assert script.count('"$TRTEXEC" ') == 1     # one engine, built once, for every preset
    for p in m["presets"]:   # validated here on ORT CPU as the device will build it, at every preset
        t = p["engines"]["tensorrt"]
        assert t["status"] == "pending-device-build" and t["precision"] == "fp16" and t["gate"]["passed"]


def test_profiles_reach_the_builder_pinned_and_checked():
    from edgevit.backends.tensorrt.profiles import add_profiles, trtexec_flags

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Config:
        def __init__(self):
            self.profiles = []

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

    class Builder:
        def create_optimization_profile(self):
            return Profile()

    class Network:
        num_inputs = 2

        def get_input(self, i):
            return type("T", (), {"name": ["input", "size"][i]})()

    profiles = [{"preset": "a", "shapes": {"input": [1, 3, 8, 8], "size": [8]}},
                {"preset": "b", "shapes": {"input": [1, 3, 8, 8], "size": [4]}}]
    config = Config()
    add_profiles(Builder(), Network(), config, profiles)
    assert [p.shapes for p in config.profiles] == [
        {"input": ([1, 3, 8, 8],) * 3, "size": ([8],) * 3}, {"input": ([1, 3, 8, 8],) * 3, "size": ([4],) * 3}]
    with pytest.raises(EdgevitError, match=r"profile 1 \(b\) gives shapes for \['input'\].*'size'"):
        add_profiles(Builder(), Network(), Config(), [profiles[0], {"preset": "b", "shapes": {"input": [1]}}])
    assert trtexec_flags(profiles)[4:] == ["--profile=1", "--minShapes=input:1x3x8x8,size:4",
                                           "--optShapes=input:1x3x8x8,size:4", "--maxShapes=input:1x3x8x8,size:4"]


class SharedOrtAsTensorRT(OrtAsTensorRT):
    """A multi-profile 'engine': ``bind`` checks that the preset's feeds are exactly its profile's shapes, as
    TensorRT's set_input_shape would, and runs the graph with them."""

    made = 0

    def __init__(self, path, settings, refit_onnx=None):
        super().__init__(path, settings, refit_onnx)
        SharedOrtAsTensorRT.made += 1
        self.profiles, self.input_name = settings["profiles"], self._r.input_name

    def bind(self, feeds):
        feeds = dict(feeds)
        shapes = self.profiles[int(feeds.pop("preset"))]["shapes"]
        assert {k: list(v.shape) for k, v in feeds.items()} == {k: v for k, v in shapes.items() if k != "input"}
        return lambda x: self._r.run({self.input_name: x, **feeds})


def test_shared_engine_build_on_the_device(orin_shared, fake_device, tmp_path, monkeypatch):
    import edgevit.backends.tensorrt as trt_backend
    import edgevit.backends.tensorrt.runner as trt_runner
    from edgevit.backends.tensorrt.device_build import DeviceBuild, engine_build

    for module in (trt_backend, trt_runner):
        monkeypatch.setattr(module, "TensorRTRunner", SharedOrtAsTensorRT)
    bundle = _copy(orin_shared[0], tmp_path / "bundle")
    summary = engine_build(bundle, how=DeviceBuild(log=lambda m: None))
    assert summary == {"built": 1, "failed": [], "built_on": ORIN} and fake_device["builds"] == ["fp16"]
    m = read_manifest(bundle).to_dict()
    verify_files(bundle, m)
    assert m["device_build"]["status"] == "done"
    for i, p in enumerate(m["presets"]):
        t = p["engines"]["tensorrt"]
        s = t["engine"]["settings"]
        assert t["status"] == "ok" and t["gate"]["passed"] and t["latency_ms"]["p50"] > 0
        assert t["engine"]["file"] == "engines/tensorrt/shared.fp16.plan" and s["shared"]["branch"] == i
        assert len(s["profiles"]) == len(FOUR) and s["built_on"] == ORIN
    SharedOrtAsTensorRT.made = 0
    x = np.random.default_rng(0).random((3, 3, 32, 32), np.float32)
    with edgevit.load(bundle) as rt, edgevit.load(bundle, backend="onnxruntime") as ref:
        assert rt.backend == "tensorrt"
        rt.wait_loaded()
        for name in FOUR:     # every preset resident on one engine: one deserialization, a context each
            np.testing.assert_allclose(rt.predict(x, preset=name, preprocessed=True).logits,
                                       ref.predict(x, preset=name, preprocessed=True).logits, atol=0.05)
    assert SharedOrtAsTensorRT.made == 1


def test_int8_candidate_kept_only_where_it_passes_and_is_faster():
    """The device step chooses with the build's rule (edgevit.build.selection): the profile's precision is the floor."""
    from edgevit.build.selection import choose_candidate

    def r(precision, passed, p50, floor=False):
        return {"id": precision, "precision": precision, "recipe": precision, "passed": passed, "floor": floor,
                "latency_ms": {"p50": p50}}

    def choose(cands):
        return choose_candidate(cands, measured=True)[0]

    fp16, fast_int8, slow_int8 = r("fp16", True, 1.0, True), r("int8", True, 0.7), r("int8", True, 1.2)
    assert choose([fp16, fast_int8]) is fast_int8
    assert choose([fp16, slow_int8]) is fp16
    assert choose([fp16, r("int8", False, 0.5)]) is fp16              # faster but inaccurate: not kept
    assert choose([r("fp16", False, 1.0, True), slow_int8]) is slow_int8
    assert choose([r("fp16", False, 1.0, True), r("int8", False, 1.0)]) is None


# -- desktop-gpu: FP16 with an INT8 candidate --------------------------------------------------------------

@pytest.fixture(scope="module")
def default_checkpoint(default_training):
    if tensorrt_ready()[0]:
        pytest.skip("TensorRT is here: the engines are built rather than left pending")
    return default_training[0]


@pytest.mark.full
def test_jetson_orin_every_preset_qdq_agrees_on_ort_cpu(default_checkpoint, tmp_path):
    """The issue's bar: every Q/DQ preset of the default model agrees with torch FP32 on >= 99% on ORT CPU."""
    from edgevit.build.builder import BuildOptions, build

    out = build(BuildOptions(target="jetson-orin", checkpoint=str(default_checkpoint), out=str(tmp_path / "b"),
                             cache_dir=str(tmp_path / "cache"), log=lambda m: None))
    m = read_manifest(out).to_dict()
    assert len(m["presets"]) == 12
    for p in m["presets"]:
        t = p["engines"]["tensorrt"]
        assert t["status"] == "pending-device-build" and t["precision"] == "int8" and t["fallback"] is None
        assert t["gate"]["passed"], (p["name"], t["gate"])


def test_desktop_gpu_build_validates_fp16_and_the_int8_candidate(quick_checkpoint, tmp_path):
    from edgevit.build.builder import BuildOptions, build

    if tensorrt_ready()[0]:
        pytest.skip("TensorRT is here: the engines are built rather than left pending")
    out = build(BuildOptions(target="desktop-gpu", checkpoint=str(quick_checkpoint), presets=["r32-k1"],
                             out=str(tmp_path / "b"), cache_dir=str(tmp_path / "cache"), log=lambda m: None))
    m = read_manifest(out).to_dict()
    t = m["presets"][0]["engines"]["tensorrt"]
    assert t["precision"] == "fp16" and t["gate"]["passed"]
    fp16 = onnx.load(str(out / t["engine"]["file"]))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT   # FP32 I/O
    (cand,) = t["candidates_on_device"]
    # Validated here on the CPU; whether it passes is the model's business (a quick checkpoint), but the
    # record must say what the gate said.
    assert cand["precision"] == "int8" and cand["passed"] == cand["gate"]["passed"] and cand["samples"] == 360
    check_tensorrt_qdq(out / cand["onnx"])
    ort = m["presets"][0]["engines"]["onnxruntime"]
    assert ort["precision"] == "fp16" and ort["engine"]["settings"]["provider_options"][
        "TensorrtExecutionProvider"]["trt_fp16_enable"] is True
    assert "--hardwareCompatibilityLevel=ampere+" in (out / "kit" / "build_engines.sh").read_text()
    settings = json.loads((out / "kit" / "settings.json").read_text())
    assert settings["r32-k1"]["candidates"][0]["engine"] == "engines/tensorrt/r32-k1.int8.plan"


# -- real TensorRT (GPU machines only) ---------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not tensorrt_ready()[0], reason=f"TensorRT engines need tensorrt and a CUDA GPU: "
                                                               f"{tensorrt_ready()[1]}")


@needs_gpu
def test_tensorrt_engine_matches_onnxruntime(quick_checkpoint, tmp_path):
    from edgevit.build.builder import BuildOptions, build

    out = build(BuildOptions(target="desktop-gpu", checkpoint=str(quick_checkpoint), presets=["r32-k1"],
                             out=str(tmp_path / "b"), cache_dir=str(tmp_path / "cache"), log=print))
    m = read_manifest(out).to_dict()
    t = m["presets"][0]["engines"]["tensorrt"]
    if m["device_build"]["status"] == "pending":
        pytest.skip(f"GPU is not the desktop-gpu target: {m['device_build']['reason']}")
    assert t["status"] == "ok" and t["agreement"] >= 0.99 and t["latency_ms"]["p50"] > 0
    with edgevit.load(out) as rt:
        x = np.random.default_rng(0).random((4, 3, 32, 32), np.float32)
        with edgevit.load(out, backend="onnxruntime") as ref:
            assert (rt.predict(x).indices == ref.predict(x).indices).mean() >= 0.75


@needs_gpu
def test_tensorrt_shared_engine_serves_every_preset(quick_checkpoint, tmp_path):
    """The multi-profile engine on a real GPU: one engine, a profile per preset, each preset agreeing with
    ONNX Runtime on the same bundle."""
    from edgevit.build.builder import BuildOptions, build

    out = build(BuildOptions(target="desktop-gpu", checkpoint=str(quick_checkpoint), presets=FOUR,
                             shared_weights=True, out=str(tmp_path / "b"), cache_dir=str(tmp_path / "cache"),
                             log=print))
    m = read_manifest(out).to_dict()
    if m["device_build"]["status"] == "pending":
        pytest.skip(f"GPU is not the desktop-gpu target: {m['device_build']['reason']}")
    files = {p["engines"]["tensorrt"]["engine"]["file"] for p in m["presets"]}
    assert len(files) == 1 and all(p["engines"]["tensorrt"]["status"] == "ok" for p in m["presets"])
    x = np.random.default_rng(0).random((4, 3, 32, 32), np.float32)
    with edgevit.load(out) as rt, edgevit.load(out, backend="onnxruntime") as ref:
        rt.wait_loaded()
        for name in FOUR:
            assert (rt.predict(x, preset=name).indices == ref.predict(x, preset=name).indices).mean() >= 0.75
