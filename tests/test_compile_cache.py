"""OpenVINO's compiled blobs are a cache the runtime checks like the bundle: by sha256, written atomically."""

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevit.backends.openvino.cache import SUFFIX, compile_checked
from pinned import OPENVINO_CPU

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    """A small IR: x @ w + b, then ReLU, with weights large enough that a flipped byte changes outputs."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("ir")
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256])],
        [numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(d / "m.onnx"))
    ov.save_model(ov.convert_model(str(d / "m.onnx")), str(d / "m.xml"))
    return d / "m.xml"


class _Counting:
    """The OpenVINO core, counting compiles and imports."""

    def __init__(self):
        import openvino as ov

        self.core, self.compiles, self.imports = ov.Core(), 0, 0

    def compile_model(self, *a, **k):
        self.compiles += 1
        return self.core.compile_model(*a, **k)

    def import_model(self, *a, **k):
        self.imports += 1
        return self.core.import_model(*a, **k)


def _run(compiled, x):
    return compiled.create_infer_request().infer({0: x})[0].copy()


def _blobs(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def test_a_cached_blob_is_imported_only_after_its_sha256_matches(ir, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    core = _Counting()
    want = _run(core.core.compile_model(str(ir), "CPU", OPENVINO_CPU), x)
    first = compile_checked(core, ir, OPENVINO_CPU, tmp_path)
    assert (core.compiles, core.imports) == (1, 0)
    [blob] = _blobs(tmp_path)
    assert blob.name.endswith(hashlib.sha256(blob.read_bytes()).hexdigest() + SUFFIX)
    again = compile_checked(core, ir, OPENVINO_CPU, tmp_path)
    assert (core.compiles, core.imports) == (1, 1)
    np.testing.assert_array_equal(_run(first, x), want)
    np.testing.assert_array_equal(_run(again, x), want)
    # other settings are another blob, not this one
    compile_checked(core, ir, {**OPENVINO_CPU, "NUM_STREAMS": "2"}, tmp_path)
    assert core.compiles == 2 and len(_blobs(tmp_path)) == 2
    assert not list(tmp_path.glob(".compiled-*"))      # no temporary file left behind


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_a_damaged_blob_is_deleted_and_compiled_again_with_one_warning(ir, tmp_path, caplog, damage):
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    core = _Counting()
    want = _run(compile_checked(core, ir, OPENVINO_CPU, tmp_path), x)
    [blob] = _blobs(tmp_path)
    data = bytearray(blob.read_bytes())
    if damage == "flip":                       # bytes flipped in the middle, where the weights are
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        blob.write_bytes(data)
    elif damage == "truncate":
        blob.write_bytes(data[: len(data) // 3])
    else:                                      # right sha256, but nothing OpenVINO can import
        junk = b"not a compiled model" * 10
        blob.unlink()
        blob = tmp_path / blob.name.replace(blob.name.split("-")[-1], hashlib.sha256(junk).hexdigest() + SUFFIX)
        blob.write_bytes(junk)
    with caplog.at_level(logging.WARNING, logger="edgevit.runtime"):
        got = _run(compile_checked(core, ir, OPENVINO_CPU, tmp_path), x)
    np.testing.assert_array_equal(got, want)
    assert core.compiles == 2
    warnings = [r for r in caplog.records if r.name == "edgevit.runtime" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "deleted, compiling again" in warnings[0].getMessage()
    assert not blob.exists() or blob.read_bytes() != bytes(data)
    [fresh] = _blobs(tmp_path)
    assert fresh.name.endswith(hashlib.sha256(fresh.read_bytes()).hexdigest() + SUFFIX)


FILL = r"""
import sys
sys.path.insert(0, sys.argv[3])
from edgevit.backends.openvino.cache import compile_checked   # edgevit first: no telemetry from openvino
import openvino as ov
from pinned import OPENVINO_CPU
core = ov.Core()
for _ in range(4):
    compile_checked(core, sys.argv[1], OPENVINO_CPU, sys.argv[2])
"""


def test_two_processes_filling_one_cache_leave_only_whole_blobs(ir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", FILL, str(ir), str(tmp_path), str(ROOT / "tests")], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "WARNING" not in err and "deleted" not in err       # nobody read a torn blob
    blobs = _blobs(tmp_path)
    assert blobs and not list(tmp_path.glob(".compiled-*"))
    for b in blobs:
        assert b.name.endswith(hashlib.sha256(b.read_bytes()).hexdigest() + SUFFIX)


def test_a_compiled_form_much_larger_than_the_engine_is_not_cached(ir, tmp_path, monkeypatch):
    """Imported, such a blob holds what the compiled model shared (OpenVINO branches: one packed copy of the
    weights per branch), so every load compiles instead; the marker saves exporting it again."""
    import edgevit.backends.openvino.cache as oc

    monkeypatch.setattr(oc, "MAX_BLOB_RATIO", 0.01)
    core = _Counting()
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    want = _run(core.core.compile_model(str(ir), "CPU", OPENVINO_CPU), x)
    for _ in range(2):
        np.testing.assert_array_equal(_run(compile_checked(core, ir, OPENVINO_CPU, tmp_path), x), want)
    assert (core.compiles, core.imports) == (2, 0) and not _blobs(tmp_path)
    assert len(list(tmp_path.glob(f"*{oc.NOT_CACHED}"))) == 1
