"""The build cache is a trust boundary like a bundle: an entry's record is checked, its paths stay inside it,
its files match the digests written with them, and nothing it names is copied from outside."""

import json
import os
from pathlib import Path

import pytest

from edgevit.backends.base import Backend, Candidate, EngineSpec
from edgevit.build.artifacts import ENTRY, Site, compile_cached, export_cached
from edgevit.build.cache import Cache
from edgevit.build.profiles import load_profile
from edgevit.errors import EdgevitError


class _Fake(Backend):
    """Compiles by writing two small files, and counts how often it is asked to."""

    name = "fake"
    compiled = 0

    def compile(self, onnx_path, out_dir, name, candidate, calib, profile) -> EngineSpec:
        type(self).compiled += 1
        (Path(out_dir) / "engines").mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "engines" / f"{name}.bin").write_bytes(b"engine " + name.encode())
        (Path(out_dir) / "engines" / f"{name}.weights").write_bytes(b"weights")
        return EngineSpec("fake", "fp32", f"engines/{name}.bin", [f"engines/{name}.weights"])


@pytest.fixture
def site(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    return Site(_Fake(), load_profile("x86-cpu"), Cache(tmp_path / "cache"), bundle), onnx


def _compile(site_onnx):
    site, onnx = site_onnx
    return compile_cached(site, onnx, "r32", Candidate("fp32", "fp32", "copy"))


def _entry(site_onnx) -> Path:
    (entry,) = (site_onnx[0].cache.root / "engine").iterdir()
    return entry


def test_a_second_build_reuses_the_entry_and_copies_its_files(site):
    spec, cached = _compile(site)
    assert not cached and (site[0].bundle_dir / spec.file).read_bytes() == b"engine r32"
    n = _Fake.compiled
    spec2, cached2 = _compile(site)
    assert cached2 and spec2 == spec and _Fake.compiled == n


def test_a_changed_cached_file_is_an_error_naming_the_entry_and_file(site):
    _compile(site)
    (_entry(site) / "engines/r32.bin").write_bytes(b"someone else's engine")
    with pytest.raises(EdgevitError, match=r"build cache entry .*engines/r32.bin is changed since it was cached"):
        _compile(site)


@pytest.mark.parametrize("bad", ["../../../payload", "/etc/hostname", "engines/x\n/../../../../payload"])
def test_a_record_naming_a_path_outside_the_entry_is_refused_before_anything_is_copied(site, bad, tmp_path):
    _compile(site)
    entry = _entry(site)
    record = json.loads((entry / ENTRY).read_text())
    record["spec"]["extra_files"] = [bad]
    record["sha256"][bad] = "0" * 64
    (entry / ENTRY).write_text(json.dumps(record))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(EdgevitError, match="build cache entry") as e:
        _compile(site)
    assert "expected a relative path inside the build cache entry" in str(e.value)
    assert sorted(p for p in tmp_path.rglob("*")) == before          # nothing written anywhere


def test_a_symlink_out_of_the_entry_is_not_followed(site, tmp_path):
    _compile(site)
    secret = tmp_path / "secret"
    secret.write_bytes(b"private key")
    target = _entry(site) / "engines/r32.weights"
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(EdgevitError, match="resolves outside the build cache entry"):
        _compile(site)
    assert (site[0].bundle_dir / "engines/r32.weights").read_bytes() == b"weights"   # the first build's copy


@pytest.mark.parametrize("change, message", [
    (lambda r: r["spec"].update(surprise=1), r"unknown field\(s\) \['surprise'\]"),
    (lambda r: r["spec"].update(file=7), r"field 'file' is int"),
    (lambda r: r["spec"].pop("backend"), r"has no 'backend'"),
    (lambda r: r["spec"]["settings"].update(cache_dir="/anywhere"), r"settings \['cache_dir'\] are chosen on the host"),
    (lambda r: r.update(sha256=[]), "expected an object with the sha256 of each file"),
])
def test_a_malformed_record_is_an_error_naming_the_field(site, change, message):
    _compile(site)
    entry = _entry(site)
    record = json.loads((entry / ENTRY).read_text())
    change(record)
    (entry / ENTRY).write_text(json.dumps(record))
    with pytest.raises(EdgevitError, match=message):
        _compile(site)


def test_unreadable_record_is_an_error_not_a_decoder_traceback(site):
    _compile(site)
    (_entry(site) / ENTRY).write_bytes(b"\xff\xfe" + b"[" * 200_000)
    with pytest.raises(EdgevitError, match=f"{ENTRY}: unreadable"):
        _compile(site)


def test_an_entry_without_digests_is_made_again(site):
    _compile(site)
    (_entry(site) / ENTRY).unlink()                  # as an older edgevit wrote it
    n = _Fake.compiled
    spec, cached = _compile(site)
    assert not cached and _Fake.compiled == n + 1 and (_entry(site) / ENTRY).is_file()


def test_a_cached_export_is_checked_too(tmp_path):
    cache = Cache(tmp_path / "cache")
    calls = []

    def export(path):
        calls.append(path)
        Path(path).write_bytes(b"onnx")
        return {"opset": 17}

    path, report, cached = export_cached("export", ("r32",), cache, export)
    assert not cached and report == {"opset": 17, "path": None}
    path2, report2, cached2 = export_cached("export", ("r32",), cache, export)
    assert cached2 and report2 == report and path2 == path and len(calls) == 1
    path.write_bytes(b"another graph")
    with pytest.raises(EdgevitError, match="model.onnx is changed since it was cached"):
        export_cached("export", ("r32",), cache, export)


def test_a_build_that_finishes_second_keeps_the_entry_the_first_made(tmp_path):
    cache = Cache(tmp_path / "cache")
    with cache.put("engine", "k") as first:
        (first / "f").write_text("first")
        with cache.put("engine", "k") as second:         # another build, finishing first
            (second / "f").write_text("second")
            (second / ENTRY).write_text("{}")
    assert (cache.path("engine", "k") / "f").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "cache" / "engine").iterdir()) == ["k"]   # no scratch left
