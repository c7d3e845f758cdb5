import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgevit.backends.base import Backend, EngineSpec, Runner
from edgevit.builder import BuildOptions, build, build_engine
from edgevit.bundle import BundleWriter, read_manifest, remove_stale_partials
from edgevit.cache import Cache
from edgevit.data.datasets import load_digits
from edgevit.errors import EdgevitError

ROOT = Path(__file__).resolve().parents[1]
TWO = ["r32-k1", "r16-k0.5"]


def test_bundle_manifest_describes_every_engine(built):
    out, logs, _ = built
    m = read_manifest(out)
    assert m["schema_version"] == 1 and m["backend"] == "openvino" and m["backends"] == ["openvino", "onnxruntime"]
    assert [p["name"] for p in m["presets"]] == TWO
    assert m["target"]["openvino"]["inference_precision"] == "f32"
    assert m["tools"]["openvino"] and m["tools"]["nncf"] and m["tools"]["onnxruntime"]
    assert m["labels"] == [str(i) for i in range(10)] and m["preprocess"]["crop"] == 32
    for p in m["presets"]:
        assert p["export"]["parity_max_abs"] < 1e-3
        for b in ("openvino", "onnxruntime"):
            e = p["engines"][b]
            assert e["status"] == "ok" and e["precision"] in ("int8", "fp32")
            assert (out / e["engine"]["file"]).is_file() and e["engine"]["file"] in m["files"]
            if e["precision"] == "int8":
                assert e["agreement"] >= 0.99 and e["fallback"] is None
            else:
                assert e["fallback"]["reason"]  # an FP32 engine in an INT8 build must say why
            assert e["latency_ms"]["p50"] > 0
        assert p["engines"]["openvino"]["inference_precision"] == "f32"
    assert (out / "report.md").read_text().startswith("# bundle")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".bundle.partial")]


def test_runtime_labels_equal_manifest_validation(built):
    """The device runtime, on the validation images, reproduces the predictions the build recorded."""
    import edgevit
    from edgevit.validate import predictions_digest

    out, _, _ = built
    m = read_manifest(out)
    ds = load_digits()
    images = [ds.val.image(i) for i in range(len(ds.val))]
    for backend in ("openvino", "onnxruntime"):
        with edgevit.load(out, backend=backend) as rt:
            assert [p.name for p in rt.presets] == ["r16-k0.5", "r32-k1"]  # cheapest first
            for p in m["presets"]:
                rt.use(p["name"])
                pred = rt.predict(images)
                e = p["engines"][backend]
                assert predictions_digest(pred.indices) == e["predictions_sha256"]
                assert float(np.mean(pred.indices == ds.val.labels)) == pytest.approx(e["top1"], abs=1e-6)
                assert pred.labels[:3] == [m["labels"][i] for i in pred.indices[:3]]


def test_runtime_does_not_import_torch(built):
    out, _, _ = built
    code = ("import sys, numpy as np, edgevit; rt = edgevit.load(sys.argv[1]); "
            "p = rt.predict(np.zeros((8, 8), np.uint8)); "
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]


def test_tampered_engine_is_refused_naming_the_file(built, tmp_path):
    import edgevit

    out, _, _ = built
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    m = read_manifest(copy)
    rel = m["presets"][0]["engines"]["onnxruntime"]["engine"]["file"]
    with open(copy / rel, "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgevitError, match=f"{rel} does not match its sha256"):
        edgevit.load(copy, backend="onnxruntime")
    edgevit.load(copy, backend="openvino").close()  # the untouched engines still load


def test_second_target_reuses_training_and_export(built, quick_checkpoint, tmp_path):
    _, _, base = built
    profile = tmp_path / "ort-only.yaml"
    profile.write_text("name: ort-only\ndevice: {kind: cpu}\nbackend: onnxruntime\n")
    logs = []
    out = build(BuildOptions(target=str(profile), checkpoint=str(quick_checkpoint), presets=["r16-k0.5"],
                             out=str(tmp_path / "b2"), cache_dir=str(base / "cache"), log=logs.append))
    assert any("export (cached)" in line for line in logs), logs
    assert read_manifest(out)["backends"] == ["onnxruntime"]


def test_build_errors_are_one_line(tmp_path):
    with pytest.raises(EdgevitError, match="unknown target 'x86'"):
        build(BuildOptions(target="x86", log=lambda m: None))
    with pytest.raises(EdgevitError, match="does not exist"):
        build(BuildOptions(target="x86-cpu", checkpoint=str(tmp_path / "none.pt"), log=lambda m: None))


class _NoisyRunner(Runner):
    """Disagrees with the reference on a fixed fraction of rows unless it is the FP32 engine."""

    def __init__(self, ref, precision):
        self.ref, self.precision, self.i = ref, precision, 0
        self.input_shape, self.output_shape = (1, 3, 32, 32), (1, 10)

    def infer(self, batch):
        row = self.ref[self.i % len(self.ref)].copy()
        if self.precision == "int8" and self.i % 10 == 0:
            row = np.roll(row, 1)  # a different top-1
        self.i += 1
        return row[None]


class _FakeBackend(Backend):
    name, library = "fake", "numpy"

    def __init__(self, ref):
        self.ref, self.calls = ref, []

    def compile(self, onnx_path, out_dir, name, precision, calib, level, profile):
        self.calls.append((precision, level))
        (Path(out_dir) / f"{name}.{precision}.{level}").write_text("engine")
        return EngineSpec(self.name, precision, f"{name}.{precision}.{level}")

    def load(self, bundle_dir, spec):
        return _NoisyRunner(self.ref, spec.precision)


def test_int8_that_misses_gate_is_requantized_then_falls_back_to_fp32(tmp_path):
    from edgevit.models import create_model
    from edgevit.profiles import load_profile

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10)).astype(np.float32)
    y = ref.argmax(-1)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    backend = _FakeBackend(ref)
    preset = create_model("supervit-nano").preset("r32-k1")
    entry = build_engine(backend, onnx, preset, load_profile("x86-cpu"), np.zeros((4, 3, 32, 32), np.float32),
                         np.zeros((50, 3, 32, 32), np.float32), y, ref, 1.0, Cache(tmp_path / "c"), tmp_path / "b",
                         measure=False)
    assert backend.calls == [("int8", 0), ("int8", 1), ("fp32", None)]
    assert entry["precision"] == "fp32" and entry["agreement"] == 1.0
    assert entry["fallback"]["from"] == "int8" and "agreement 90.00% < 99.00%" in entry["fallback"]["reason"]
    assert [a["passed"] for a in entry["attempts"]] == [False, False, True]
    assert not (tmp_path / "b" / "r32-k1.int8.0").exists()  # failed attempts do not ship


def test_killed_build_leaves_nothing_at_output(quick_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "edgevit", "build", "--target", "x86-cpu", "--checkpoint", str(quick_checkpoint),
           "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-latency"]

    def partials():
        return [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle.partial")]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let the pipe fill
        deadline = time.time() + 300
        while not partials() and time.time() < deadline:  # the bundle is being assembled from now on
            time.sleep(0.2)
        assert partials(), "the build never started writing its bundle"
        time.sleep(1.0)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode == (143 if sig == signal.SIGTERM else -9)
        assert not out.exists()
        partial = partials()
        if sig == signal.SIGTERM:
            assert partial == []            # a terminated build cleans up after itself
        else:                               # a killed one cannot: the next build of this output does
            assert partial and remove_stale_partials(out) and partials() == []


def test_next_build_removes_only_the_partials_of_dead_builds(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale, live, other = (tmp_path / f".bundle.partial-{dead}-a", tmp_path / f".bundle.partial-{os.getpid()}-b",
                          tmp_path / f".elsewhere.partial-{dead}-c")
    for d in (stale, live, other):
        d.mkdir()
        (d / "engine.bin").write_bytes(b"x")
    with BundleWriter(tmp_path / "bundle") as w:
        assert w.tmp.name.startswith(f".bundle.partial-{os.getpid()}-")
    assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.slow
def test_default_build_x86_cpu_all_presets_int8(default_training, tmp_path):
    """The issue's bar: 12 presets, OpenVINO INT8 and ONNX Runtime INT8, each agreeing >= 99% with torch."""
    ckpt, _ = default_training
    logs = []
    t0 = time.perf_counter()
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(ckpt), out=str(tmp_path / "b"),
                             cache_dir=str(tmp_path / "cache"), log=logs.append))
    seconds = time.perf_counter() - t0
    m = read_manifest(out)
    assert len(m["presets"]) == 12
    for p in m["presets"]:
        for b in ("openvino", "onnxruntime"):
            e = p["engines"][b]
            assert e["precision"] == "int8", (p["name"], b, e.get("fallback"))
            assert e["agreement"] >= 0.99, (p["name"], b, e["agreement"])
    assert any(p["pareto"] for p in m["presets"])
    print(f"\nbuild of 12 presets: {seconds:.0f} s\n" + (out / "report.md").read_text())


def test_out_never_replaces_something_that_is_not_a_bundle(tmp_path):
    from edgevit.bundle import BundleWriter

    precious = tmp_path / "Documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(EdgevitError, match="exists and is not an edgevit bundle; refusing to replace it"):
        with BundleWriter(precious):
            pass
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgevitError, match="is not a directory"):
        with BundleWriter(tmp_path / "file"):
            pass


def test_bundle_files_follow_the_umask(built):
    out, _, _ = built
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (0o777 & ~mask)
    assert ((out / "manifest.json").stat().st_mode & 0o777) == (0o666 & ~mask)


def test_precision_a_backend_cannot_build_falls_back_with_reason(quick_checkpoint, tmp_path):
    profile = tmp_path / "gpu-ish.yaml"
    profile.write_text("name: gpu-ish\ndevice: {kind: cpu}\nbackend: onnxruntime\nprecision: fp16\n")
    out = build(BuildOptions(target=str(profile), checkpoint=str(quick_checkpoint), presets=["r16-k0.5"],
                             out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"), measure=False,
                             log=lambda m: None))
    e = read_manifest(out)["presets"][0]["engines"]["onnxruntime"]
    assert e["precision"] == "fp32" and "does not build fp16 on this host" in e["fallback"]["reason"]
