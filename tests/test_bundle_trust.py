"""What a bundle says is checked before it is used: the manifest file itself, each engine record's fields and
settings, every file a library opens on its own, and whether each engine fits the labels and preprocessing."""

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgevit
from edgevit.bundle import read_manifest, sha256_file
from edgevit.errors import EdgevitError
from test_manifest import MANIFEST

IMAGE = np.zeros((32, 32, 3), np.uint8)


def _onnx(path: Path, classes: int = 10, side: int = 32) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3 * side * side, classes)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 3 * side * side], np.int64), "shape")
    g = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["flat"]),
                           helper.make_node("MatMul", ["flat", "W"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], [w, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))


def _write(root: Path, d: dict) -> Path:
    d["files"] = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
                  if p.is_file() and p.name != "manifest.json"}
    (root / "manifest.json").write_text(json.dumps(d))
    return root


def _ort_bundle(tmp_path, change=None, classes=10, side=32) -> Path:
    """A real, loadable one-preset bundle with an ONNX Runtime engine (a linear layer)."""
    root = tmp_path / "bundle"
    shutil.rmtree(root, ignore_errors=True)
    _onnx(root / "engines/onnxruntime/r32.onnx", classes, side)
    d = copy.deepcopy(MANIFEST)
    d["preprocess"] = {"resize": 32, "crop": 32}
    if change:
        change(d)
    return _write(root, d)


def _ov_bundle(tmp_path, list_weights=True, settings=None) -> Path:
    import openvino as ov

    root = tmp_path / "ov"
    shutil.rmtree(root, ignore_errors=True)
    _onnx(tmp_path / "m.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(root / "engines/openvino/r32.fp32.xml"),
                  compress_to_fp16=False)
    d = copy.deepcopy(MANIFEST)
    d["preprocess"] = {"resize": 32, "crop": 32}
    p = d["presets"][0]
    p["engines"] = {"openvino": {**p["engines"]["onnxruntime"], "engine": {
        "backend": "openvino", "precision": "fp32", "file": "engines/openvino/r32.fp32.xml",
        "extra_files": ["engines/openvino/r32.fp32.bin"] if list_weights else [],
        "settings": {"inference_precision": "f32", **(settings or {})}, "quantization": {}, "status": "ok"}}}
    p["default"] = {**p["default"], "backend": "openvino"}
    d.update(backend="openvino", backends=["openvino"])
    return _write(root, d)


def _engine(d):
    return d["presets"][0]["engines"]["onnxruntime"]["engine"]


def test_the_test_bundles_load_and_predict(tmp_path):
    with edgevit.load(_ort_bundle(tmp_path), cache=False) as rt:
        assert rt.predict(IMAGE).logits.shape == (1, 10)
    with edgevit.load(_ov_bundle(tmp_path), cache=False) as rt:
        assert rt.predict(IMAGE).logits.shape == (1, 10)


def test_a_manifest_linked_in_from_outside_is_refused(tmp_path):
    root = _ort_bundle(tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.move(root / "manifest.json", outside)
    os.symlink(outside, root / "manifest.json")
    with pytest.raises(EdgevitError, match="manifest.json' resolves outside the bundle"):
        read_manifest(root)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "not UTF-8 text"), (b"[" * 200_000 + b"]" * 200_000, "nested too deeply|not valid JSON"),
    (b" " * ((16 << 20) + 1), "larger than 16 MB")])
def test_a_manifest_that_is_not_one_is_a_clear_error(tmp_path, content, message):
    root = _ort_bundle(tmp_path)
    (root / "manifest.json").write_bytes(content)
    with pytest.raises(EdgevitError, match=message):
        read_manifest(root)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(surprise=1), "surprise"),
    (lambda e: e["settings"].update(cache_dir="/anywhere"), "cache_dir"),
    (lambda e: e["settings"].update(host_code_allowed=True), "host_code_allowed"),
])
def test_an_engine_record_may_not_carry_unknown_fields_or_runtime_settings(tmp_path, change, message):
    root = _ort_bundle(tmp_path, lambda d: change(_engine(d)))
    with pytest.raises(EdgevitError, match=message) as e:
        edgevit.load(root, cache=False)
    assert "Traceback" not in str(e.value)


def test_openvino_weights_must_be_listed_so_they_are_checked(tmp_path):
    outside = tmp_path / "weights.bin"
    root = _ov_bundle(tmp_path, list_weights=False)
    weights = root / "engines/openvino/r32.fp32.bin"
    shutil.move(weights, outside)
    os.symlink(outside, weights)            # what OpenVINO would open by itself, from outside the bundle
    d = json.loads((root / "manifest.json").read_text())
    del d["files"]["engines/openvino/r32.fp32.bin"]    # nowhere in the manifest, so no check reaches it
    (root / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(EdgevitError, match=r"its weights engines/openvino/r32.fp32.bin are not among the engine's files"):
        edgevit.load(root, cache=False)


def test_changed_openvino_weights_are_caught_at_load(tmp_path):
    root = _ov_bundle(tmp_path)
    w = root / "engines/openvino/r32.fp32.bin"
    w.write_bytes(w.read_bytes()[::-1])
    with pytest.raises(EdgevitError, match="r32.fp32.bin does not match its sha256"):
        edgevit.load(root, cache=False)


def test_labels_that_do_not_fit_the_engine_are_an_error_at_load(tmp_path):
    root = _ort_bundle(tmp_path, lambda d: d.update(labels=["a", "b"]))
    with pytest.raises(EdgevitError, match="gives 10 logits for the manifest's 2 labels"):
        edgevit.load(root, cache=False)


def test_preprocessing_that_does_not_make_the_engines_input_is_an_error_at_load(tmp_path):
    root = _ort_bundle(tmp_path, lambda d: d.update(preprocess={"resize": 16, "crop": 16}))
    with pytest.raises(EdgevitError, match=r"takes \(3, 32, 32\) images where the manifest's preprocess makes \(3, 16, 16\)"):
        edgevit.load(root, cache=False)


@pytest.mark.parametrize("preprocess, message", [
    ({"resize": "big", "crop": 32}, "preprocess.resize 'big': expected a whole number"),
    ({"resize": 10 ** 12, "crop": 32}, "preprocess.resize 1000000000000: expected a whole number from 1 to 8192"),
    ({"resize": 32, "crop": 0}, "preprocess.crop 0"),
    ({"resize": 32, "crop": 32, "std": [0, 0, 0]}, r"preprocess.std \[0, 0, 0\]: expected positive values"),
    ({"resize": 32, "crop": 32, "mean": ["x", 0, 0]}, "expected finite numbers"),
    ({"resize": 32, "crop": 32, "mean": 5}, "expected lists of numbers, one per channel"),
])
def test_preprocessing_values_are_checked_before_they_are_used(tmp_path, preprocess, message):
    root = _ort_bundle(tmp_path, lambda d: d.update(preprocess=preprocess))
    with pytest.raises(EdgevitError, match=message):
        edgevit.load(root, cache=False)


def test_onnx_runtime_options_a_bundle_may_set_are_the_ones_edgevit_writes(tmp_path):
    from edgevit.backends.onnxruntime import provider_options
    from edgevit.backends.onnxruntime.runner import PROVIDER_KEYS, OrtRunner
    from edgevit.build.profiles import load_profile

    for precision in ("fp32", "fp16", "int8"):
        for provider, options in provider_options(precision, load_profile("x86-cpu")).items():
            assert set(options) <= PROVIDER_KEYS[provider], provider
    _onnx(tmp_path / "m.onnx")
    plugin = {"TensorrtExecutionProvider": {"trt_extra_plugin_lib_paths": "/tmp/evil.so"}}
    with pytest.raises(EdgevitError, match="trt_extra_plugin_lib_paths"):
        OrtRunner(tmp_path / "m.onnx", options=plugin)
    with pytest.raises(EdgevitError, match="session.load_model_format"):
        OrtRunner(tmp_path / "m.onnx", session_config={"session.load_model_format": "ORT"})


@pytest.mark.parametrize("change, message", [
    (lambda o: o.update(model="x"), "field model is str"),
    (lambda o: o.update(format_version="2"), "field format_version is str"),
    (lambda o: o.update(state_dict=[1, 2]), "field state_dict is list"),
    (lambda o: o["model"].pop("config"), "field model.config is NoneType"),
    (lambda o: o.update(format_version=99, model="a later layout"), "has format version 99; this edgevit"),
])
def test_a_malformed_edgevit_checkpoint_is_an_error_naming_the_field(tmp_path, change, message):
    import torch

    from edgevit.build.checkpoints import FORMAT, load_checkpoint

    obj = {"format": FORMAT, "format_version": 1, "model": {"name": "supervit-nano", "config": {}},
           "state_dict": {"w": torch.zeros(1)}}
    change(obj)
    torch.save(obj, tmp_path / "m.pt")
    with pytest.raises(EdgevitError, match=message):
        load_checkpoint(tmp_path / "m.pt")


def test_the_device_build_refuses_a_bundle_with_a_link_out(tmp_path):
    from edgevit.backends.tensorrt.device_build import refuse_links_out

    root = _ort_bundle(tmp_path)
    refuse_links_out(root)                                   # links-free: fine
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "kit")
    with pytest.raises(EdgevitError, match="kit is a link to .*outside the bundle"):
        refuse_links_out(root)


def test_a_shared_engines_preset_inputs_are_among_the_files_a_load_checks():
    from edgevit.backends.base import EngineSpec, get_backend

    shared = {"inputs": "engines/shared-inputs.npz", "arrays": "r32", "lengths": {}}
    for backend, file, extra in (("onnxruntime", "engines/s.onnx", []),
                                 ("openvino", "engines/s.xml", ["engines/s.bin"])):
        spec = EngineSpec(backend, "int8", file, extra, settings={"shared": shared})
        assert get_backend(backend).files_read(spec) == [file, *extra, "engines/shared-inputs.npz"]


def test_files_a_library_opens_by_itself_must_be_listed_on_every_backend():
    from edgevit.backends.base import EngineSpec, get_backend

    ov = get_backend("openvino")
    for name in ("engines/a.XML", "engines/a"):     # OpenVINO would read either, and engines/a.bin beside it
        with pytest.raises(EdgevitError, match="expected an OpenVINO IR file ending in .xml"):
            ov.files_read(EngineSpec("openvino", "fp32", name, ["engines/a.bin"]))
    trt = get_backend("tensorrt")
    settings = {"onnx": "kit/tensorrt/r32.onnx", "strip_weights": True, "weights": "kit/tensorrt/weights.bin"}
    with pytest.raises(EdgevitError, match=r"\['kit/tensorrt/r32.onnx', 'kit/tensorrt/weights.bin'\] are read at load"):
        trt.files_read(EngineSpec("tensorrt", "fp16", "engines/r32.plan", [], settings=settings))
    listed = EngineSpec("tensorrt", "fp16", "engines/r32.plan", [settings["onnx"], settings["weights"]],
                        settings=settings)
    assert trt.files_read(listed) == listed.files
