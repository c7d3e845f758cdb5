"""A bundle is a trust boundary: no path its manifest names may lead outside it, and nothing outside is opened."""

import copy
import json
import os

import pytest

from edgevit.bundle import read_manifest, sha256_file, verify_files
from edgevit.errors import EdgevitError
from test_manifest import MANIFEST


def _bundle(tmp_path, change=None):
    d = copy.deepcopy(MANIFEST)
    if change:
        change(d)
    root = tmp_path / "bundle"
    root.mkdir(exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(d))
    return root


def _engine(d):
    return d["presets"][0]["engines"]["onnxruntime"]["engine"]


@pytest.mark.parametrize("where, bad", [
    ("engine file", "../outside.onnx"), ("engine file", "/etc/passwd"), ("engine file", "engines/../../x.onnx"),
    ("engine file", "engines//x.onnx"), ("engine file", "./engines/x.onnx"), ("engine file", "engines\\..\\x"),
    ("preset onnx", "../r32.onnx"), ("files key", "../outside.onnx"), ("checkpoint", "/root/model.pt"),
    ("shared inputs", "../inputs.npz"), ("extra file", "../x.bin"),
    ("engine file", "engines/x\n/../../../../etc/hostname"), ("engine file", "engines/x.onnx\n")])
def test_a_path_that_leaves_the_bundle_is_refused_naming_the_field(tmp_path, where, bad):
    def change(d):
        if where == "engine file":
            _engine(d)["file"] = bad
        elif where == "preset onnx":
            d["presets"][0]["onnx"] = bad
        elif where == "files key":
            d["files"][bad] = "0" * 64
        elif where == "checkpoint":
            d["checkpoint"] = bad
        elif where == "shared inputs":
            _engine(d)["settings"]["shared"] = {"inputs": bad, "arrays": "r32", "lengths": {}}
        else:
            _engine(d)["extra_files"] = [bad]

    with pytest.raises(EdgevitError) as e:
        read_manifest(_bundle(tmp_path, change))
    text = str(e.value)
    assert "manifest.json" in text or "bundle" in text
    assert any(w in text for w in ("files", "onnx", "checkpoint", "inputs", "extra_files", "file")), text
    assert "Traceback" not in text and len(text) < 600


def test_a_symlink_out_of_the_bundle_is_refused_before_it_is_opened(tmp_path):
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(b"not yours")
    root = _bundle(tmp_path)
    (root / "engines" / "onnxruntime").mkdir(parents=True)
    os.symlink(outside, root / "engines/onnxruntime/r32.onnx")
    with pytest.raises(EdgevitError, match=r"engines/onnxruntime/r32.onnx' resolves outside the bundle"):
        read_manifest(root)


def test_files_inside_the_bundle_and_links_within_it_are_read(tmp_path):
    root = _bundle(tmp_path)
    (root / "engines" / "onnxruntime").mkdir(parents=True)
    (root / "engines/real.onnx").write_bytes(b"engine")
    os.symlink(root / "engines/real.onnx", root / "engines/onnxruntime/r32.onnx")   # a link inside is fine
    d = copy.deepcopy(MANIFEST)
    d["files"] = {"engines/onnxruntime/r32.onnx": sha256_file(root / "engines/real.onnx")}
    (root / "manifest.json").write_text(json.dumps(d))
    verify_files(root, read_manifest(root))


def test_the_schema_refuses_what_the_reader_refuses():
    import jsonschema

    from edgevit.bundle_paths import PATTERN

    for good in ("engines/openvino/r32-k1.int8.xml", "model.pt", "kit/tensorrt/weights.bin", "a..b/c"):
        jsonschema.validate(good, {"type": "string", "pattern": PATTERN})
    for bad in ("../x", "/x", "a/../b", "a//b", "./a", "a/.", "a\\b", "", "x\n/../../etc/hostname", "a\n"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, {"type": "string", "pattern": PATTERN})


def test_load_refuses_what_is_not_a_bundle_path_or_a_preset_list(tmp_path):
    import edgevit

    with pytest.raises(EdgevitError, match="bundle: expected the path of a bundle folder"):
        edgevit.load(None)
    root = _bundle(tmp_path)
    with pytest.raises(EdgevitError, match="presets: an empty list loads nothing"):
        edgevit.load(root, presets=[])
    with pytest.raises(EdgevitError, match=r"unknown preset\(s\) \['r16-k1'\]; this bundle has: r32$"):
        edgevit.load(root, presets="r16-k1")          # one name, not its characters
    with pytest.raises(EdgevitError, match="presets: expected a preset name or a list of names"):
        edgevit.load(root, presets=[3])


def test_an_engine_its_library_cannot_read_is_an_error_naming_the_file(tmp_path):
    import edgevit

    with pytest.raises(EdgevitError, match=r"preprocess: missing field\(s\) \['resize', 'crop'\]"):
        edgevit.load(_bundle(tmp_path), verify=False)
    root = _bundle(tmp_path, lambda d: d.update(preprocess={"resize": 32, "crop": 32}))
    (root / "engines" / "onnxruntime").mkdir(parents=True)
    (root / "engines/onnxruntime/r32.onnx").write_bytes(b"\x08\x07truncated")
    with pytest.raises(EdgevitError, match=r"onnxruntime cannot load engine engines/onnxruntime/r32.onnx: .*verify=False"):
        edgevit.load(root, verify=False)
    with pytest.raises(EdgevitError, match="does not match its sha256"):
        edgevit.load(root)


def test_bench_refuses_empty_presets_and_a_plot_it_cannot_write_before_measuring(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import edgevit.bench.run
    from edgevit.cli import cli

    root = _bundle(tmp_path)
    measured = []
    monkeypatch.setattr(edgevit.bench.run, "run_bench", lambda opts: measured.append(opts))
    for args, message in ((["--presets", ""], "--presets '': expected one or more comma-separated names"),
                          (["--presets", " , "], "--presets ' , ': expected one or more"),
                          (["--backends", ","], "--backends ',': expected one or more"),
                          (["--plot", str(tmp_path / "x.txt")], "x.txt: .txt is not an image format")):
        r = CliRunner().invoke(cli, ["bench", str(root), *args, "--json", str(tmp_path / "b.json"),
                                     "--md", str(tmp_path / "b.md")])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert measured == []


def test_bench_refuses_a_pickled_checkpoint_without_pointing_at_a_flag_it_lacks(tmp_path):
    import datetime

    import torch

    from edgevit.bench.run import _torch_engines
    from edgevit.bundle import read_manifest

    root = _bundle(tmp_path, lambda d: d.update(checkpoint="model.pt"))
    torch.save({"model": {}, "when": datetime.date(2026, 1, 1)}, root / "model.pt")   # needs full unpickling
    d = json.loads((root / "manifest.json").read_text())
    d["files"]["model.pt"] = sha256_file(root / "model.pt")
    (root / "manifest.json").write_text(json.dumps(d))
    m = read_manifest(root)
    with pytest.raises(EdgevitError) as e:
        _torch_engines(root, m, m.presets, 1)
    assert "--no-baseline" in str(e.value) and "--trust-checkpoint" not in str(e.value)


def test_inspect_and_bench_name_a_path_that_leaves_the_bundle_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from edgevit.cli import cli

    root = _bundle(tmp_path, lambda d: _engine(d).update(file="/etc/passwd"))
    for cmd in (["inspect", str(root)], ["bench", str(root)]):
        r = CliRunner().invoke(cli, cmd)
        assert r.exit_code == 2 and "'/etc/passwd': expected a relative path inside the bundle" in r.output, r.output
