"""The typed manifest and its shipped JSON Schema: what readers accept and the errors they give."""

import copy
import json
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest

from edgevit.bundle import BundleWriter, read_manifest
from edgevit.errors import EdgevitError
from edgevit.manifest import SCHEMA_FILE, EngineEntry, Manifest, PresetEntry, parse, schema

ENGINE = {"status": "ok", "engine": {"backend": "onnxruntime", "precision": "fp32", "file": "engines/onnxruntime/r32.onnx",
                                     "extra_files": [], "settings": {}, "quantization": {}, "status": "ok"},
          "precision": "fp32", "recipe": "fp32", "top1": 0.9, "agreement": 1.0,
          "gate": {"passed": True, "reason": ""}, "latency_ms": {"p50": 1.5, "p90": 2.0, "p99": 2.5},
          "chosen": {"id": "fp32", "precision": "fp32", "recipe": "fp32", "why": "only candidate"},
          "candidates": [{"id": "fp32", "precision": "fp32", "passed": True, "latency_ms": {"p50": 1.5}}],
          "fallback": None, "providers": ["CPUExecutionProvider"]}
PRESET = {"name": "r32", "resolution": 32, "keep_rate": 1.0, "flops": 1000, "gflops": 1e-6, "params": 10,
          "onnx": "onnx/r32.onnx", "export": {"opset": 17}, "torch": {"top1": 0.9, "samples": 10},
          "engines": {"onnxruntime": ENGINE}, "default": {"backend": "onnxruntime", "why": "only backend"},
          "pareto": True}
MANIFEST = {
    "schema": "edgevit-bundle", "schema_version": 1, "edgevit_version": "0.1.0", "created": "2026-11-30T00:00:00+00:00",
    "name": "toy-x86-cpu", "model": {"name": "supervit-nano", "family": "supervit", "config": {}},
    "target": {"name": "x86-cpu"}, "profile_file": None, "backend": "onnxruntime", "backends": ["onnxruntime"],
    "unavailable_backends": {}, "precision": ["fp32"], "opset": 17, "engine_mix": {},
    "input": {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"},
    "output": {"name": "logits", "shape": [1, 10], "dtype": "float32"},
    "preprocess": {}, "labels": [str(i) for i in range(10)], "data": {"name": "digits"}, "tools": {}, "host": {},
    "latency_measured_here": True, "latency_note": None, "checkpoint": None, "build_seconds": 1.0,
    "presets": [PRESET], "files": {"engines/onnxruntime/r32.onnx": "0" * 64},
}


def _write(tmp_path, d) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    return tmp_path


def test_a_valid_manifest_reads_typed_and_round_trips(tmp_path):
    m = read_manifest(_write(tmp_path, MANIFEST))
    assert isinstance(m, Manifest) and isinstance(m.presets[0], PresetEntry)
    e = m.preset("r32").engines["onnxruntime"]
    assert isinstance(e, EngineEntry) and e.ok and e.latency("p90") == 2.0 and e.extra == {"providers": ["CPUExecutionProvider"]}
    assert m.presets[0].default_backend() == "onnxruntime"
    assert m.to_dict() == MANIFEST and list(m.to_dict()) == list(MANIFEST)   # nothing added, nothing reordered
    with pytest.raises(EdgevitError, match="has no preset 'r99'; it has: r32"):
        m.preset("r99")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("labels"), r"field \(top level\): 'labels' is a required property"),
    (lambda d: d.update(opset="17"), r"field opset: '17' is not of type 'integer'"),
    (lambda d: d["presets"][0].pop("flops"), r"field presets/0: 'flops' is a required property"),
    (lambda d: d["presets"][0].update(resolution=32.5), r"field presets/0/resolution: 32.5 is not of type 'integer'"),
    (lambda d: d["presets"][0]["engines"]["onnxruntime"].update(status=3),
     r"field presets/0/engines/onnxruntime/status: 3 is not of type 'string'"),
    (lambda d: d["presets"][0]["engines"]["onnxruntime"]["gate"].pop("passed"),
     r"field presets/0/engines/onnxruntime/gate: 'passed' is a required property"),
    (lambda d: d.update(colour="red"), r"Additional properties are not allowed \('colour' was unexpected\)"),
    (lambda d: d["files"].update({"x.bin": "not-a-digest"}), r"field files/x.bin: 'not-a-digest' does not match"),
    (lambda d: d.update(schema_version="one"), r"schema_version 'one' is not an integer; this edgevit reads bundles "
                                                r"of schema_version 1"),
    (lambda d: d.update(schema_version=True), r"schema_version True is not an integer"),
    (lambda d: d.update(schema_version=2), r"schema_version 2 is not the one this edgevit .* reads \(1\); upgrade edgevit"),
    (lambda d: d.update(schema_version=0), r"schema_version 0 .*rebuild the bundle with this edgevit"),
    (lambda d: d.update(schema="something-else"), r"schema is 'something-else', expected 'edgevit-bundle'"),
])
def test_the_reader_names_the_file_and_field_of_a_bad_manifest(tmp_path, change, message):
    d = copy.deepcopy(MANIFEST)
    change(d)
    with pytest.raises(EdgevitError, match=message) as err:
        read_manifest(_write(tmp_path, d))
    assert str(tmp_path / "manifest.json") in str(err.value)


def test_a_manifest_that_is_not_an_object_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(EdgevitError, match="the manifest is a JSON list, expected an object"):
        read_manifest(tmp_path)


def test_the_writer_refuses_a_manifest_no_reader_would_accept(tmp_path):
    d = copy.deepcopy(MANIFEST)
    d["presets"][0].pop("torch")
    out = tmp_path / "bundle"
    with pytest.raises(EdgevitError, match=r"the manifest of .*bundle: field presets/0: 'torch' is a required"):
        with BundleWriter(out) as w:
            w.commit(d, "report")
    assert not out.exists()          # nothing half-written


def test_the_dataclasses_and_the_shipped_schema_name_the_same_fields():
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert SCHEMA_FILE.parent.name == "edgevit" and SCHEMA_FILE.is_file()   # inside the package (package-data)
    levels = [(Manifest, s), (PresetEntry, s["$defs"]["preset"]), (EngineEntry, s["$defs"]["engine"])]
    for cls, node in levels:
        declared = {f.name for f in fields(cls)} - {"present", "extra"}
        assert declared == set(node["properties"]), cls.__name__
        required = {f.name for f in fields(cls) if f.default is f.default_factory is __import__("dataclasses").MISSING}
        assert set(node["required"]) <= declared and required <= set(node["required"]), cls.__name__


def test_parse_gives_the_same_object_as_the_reader(tmp_path):
    assert parse(copy.deepcopy(MANIFEST), "x") == read_manifest(_write(tmp_path, MANIFEST))
