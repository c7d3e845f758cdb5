import json
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

from edgevit.backends.base import Backend, Candidate, EngineSpec, Runner
from edgevit.build.builder import BuildOptions, build
from edgevit.bundle import BundleWriter, read_manifest, remove_stale_partials
from edgevit.build.cache import Cache
from edgevit.data.datasets import load_digits
from edgevit.errors import EdgevitError
from rules import check_fallback

ROOT = Path(__file__).resolve().parents[1]
TWO = ["r32-k1", "r16-k0.5"]


def test_bundle_manifest_describes_every_engine(built):
    import jsonschema

    from edgevit.manifest import schema

    out, logs, _ = built
    m = read_manifest(out).to_dict()
    jsonschema.validate(json.loads((out / "manifest.json").read_text()), schema())   # the file as written
    assert m["schema_version"] == 1 and m["backend"] == "openvino" and m["backends"] == ["openvino", "onnxruntime"]
    assert [p["name"] for p in m["presets"]] == TWO
    assert m["target"]["openvino"]["inference_precision"] == "f32"
    assert m["tools"]["openvino"] and m["tools"]["nncf"] and m["tools"]["onnxruntime"]
    assert m["labels"] == [str(i) for i in range(10)] and m["preprocess"]["crop"] == 32
    assert 0 <= m["obtain_seconds"] <= m["build_seconds"]    # training or loading, counted apart
    for p in m["presets"]:
        assert p["export"]["parity_max_abs"] < 1e-3
        for b in ("openvino", "onnxruntime"):
            e = p["engines"][b]
            assert e["status"] == "ok" and e["precision"] in ("int8", "bf16", "fp32")
            assert (out / e["engine"]["file"]).is_file() and e["engine"]["file"] in m["files"]
            _check_choice(p["name"], b, e)
            check_fallback(e, m["precision"][0])   # INT8 wins on AVX2 hosts, bf16 can on AVX512-BF16 ones
            # Only the chosen candidate ships.
            others = [c for c in e["candidates"] if c["id"] != e["chosen"]["id"] and not c.get("skipped")]
            assert not any(list((out / "engines" / b).glob(f"{p['name']}.{c['id']}.*")) for c in others)
        assert p["default"]["backend"] in ("openvino", "onnxruntime") and p["default"]["why"]
        assert p["engines"]["openvino"]["inference_precision"] in ("f32", "bf16")
    assert (out / "report.md").read_text().startswith("# bundle")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".bundle.partial")]
    # Resident memory with every preset loaded, per backend, measured in a fresh process; each engine's share
    for b in ("openvino", "onnxruntime"):
        total = m["memory"]["backends"][b]
        assert total["presets"] == len(TWO) and total["all_presets_mb"] > 0 and not total["shared_weights"]
        added = [p["engines"][b]["resident_mb"] for p in m["presets"]]
        assert all(a["all_presets"] == total["all_presets_mb"] for a in added)
        assert sum(a["added"] for a in added) == pytest.approx(total["all_presets_mb"], abs=0.2)
    assert any(line.startswith("[memory] every preset resident") for line in logs)
    assert "memory     every preset resident: openvino" in (out / "report.md").read_text()


def _check_choice(preset: str, backend: str, e: dict) -> None:
    """What must hold on every host, whichever precision wins: the chosen engine passed the gate, was measured
    with every passing candidate in the same pass, and is not slower than that preset's FP32 candidate."""
    assert e["gate"]["passed"], (preset, backend, e["gate"])
    assert e["gate"]["samples"] > 0 and e["gate"]["agreement_interval"][0] <= e["agreement"]
    chosen = next(c for c in e["candidates"] if c["id"] == e["chosen"]["id"])
    assert chosen["passed"] and chosen["latency_ms"] == e["latency_ms"]
    fp32 = next(c for c in e["candidates"] if c["floor"])
    assert fp32["passed"] and fp32["latency_ms"]["interleaved"]
    assert e["latency_ms"]["p50"] <= fp32["latency_ms"]["p50"], (preset, backend, e["chosen"])
    for c in e["candidates"]:
        assert c.get("skipped") or c["passed"] == (c["floor"] or c["gate"]["passed"])
        if c.get("skipped"):
            assert c["reason"]           # e.g. BF16 on a CPU without AVX512-BF16


def test_load_runs_each_presets_default_engine(built):
    """With no backend named, edgevit.load runs each preset on the engine the build measured fastest."""
    import edgevit

    out, _, _ = built
    m = read_manifest(out).to_dict()
    with edgevit.load(out) as rt:
        for p in m["presets"]:
            info = rt.preset(p["name"])
            e = p["engines"][p["default"]["backend"]]
            assert info.backend == p["default"]["backend"] and info.precision == e["precision"]
            assert info.latency_ms == e["latency_ms"]["p50"]
    # Every other backend's default engine is at least as slow as the default one (the selection rule).
    for p in m["presets"]:
        d = p["engines"][p["default"]["backend"]]["latency_ms"]["p50"]
        primary = p["engines"][m["backend"]]["latency_ms"]["p50"]
        assert d <= primary


def test_load_returns_with_the_starting_preset_and_loads_the_others_behind_it(built, monkeypatch):
    """``load`` returns once the preset the runtime starts on is resident. A preset asked for before the
    background loader reached it is waited for, and answers as a fully loaded runtime does."""
    import edgevit
    from edgevit.backends.onnxruntime import OnnxRuntimeBackend

    out, _, _ = built
    x = list(np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8))
    with edgevit.load(out, background=False) as ref:
        expected = {p.name: ref.predict(x, preset=p.name).indices.tolist() for p in ref.presets}
    with edgevit.load(out) as rt:
        got = {p.name: rt.predict(x, preset=p.name).indices.tolist() for p in rt.presets}
        assert rt.wait_loaded() is rt
    assert got == expected
    edgevit.load(out).close()        # closing while the loader runs stops it cleanly
    # A program that exits while the loader is compiling exits cleanly (a native compile cut off by the
    # interpreter's exit aborted the process before the loader was stopped at exit).
    for backend in ("openvino", "onnxruntime"):
        code = f"import sys, edgevit; edgevit.load(sys.argv[1], backend={backend!r}); sys.exit(0)"
        r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
        assert r.returncode == 0 and "terminate called" not in r.stderr, (backend, r.returncode, r.stderr[-500:])

    # A preset that fails to load in the background says so, naming it, to whoever asks for it.
    from edgevit.runtime.runtime import load_info

    start = load_info(out, "onnxruntime").current
    other = next(p for p in ("r32-k1", "r16-k0.5") if p != start)   # the fixture's two presets
    real = OnnxRuntimeBackend.load

    def broken(self, bundle_dir, spec):
        if f"{other}." in spec.file:
            raise RuntimeError("engine damaged")
        return real(self, bundle_dir, spec)

    monkeypatch.setattr(OnnxRuntimeBackend, "load", broken)
    with edgevit.load(out, backend="onnxruntime") as rt:
        assert rt.current == start and rt.predict(x).preset == start
        with pytest.raises(EdgevitError, match=f"preset {other} failed to load: onnxruntime cannot load engine "
                                               f"engines/onnxruntime/{other}.*: engine damaged"):
            rt.predict(x, preset=other)
        with pytest.raises(EdgevitError, match=f"{other} failed to load"):
            rt.wait_loaded()


def test_runtime_labels_equal_manifest_validation(built):
    """The device runtime, on the validation images, reproduces the predictions the build recorded."""
    import edgevit
    from edgevit.build.validate import predictions_digest

    out, _, _ = built
    m = read_manifest(out).to_dict()
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
    m = read_manifest(copy).to_dict()
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
    assert read_manifest(out).to_dict()["backends"] == ["onnxruntime"]


def test_build_errors_are_one_line(tmp_path):
    with pytest.raises(EdgevitError, match="unknown target 'x86'"):
        build(BuildOptions(target="x86", log=lambda m: None))
    with pytest.raises(EdgevitError, match="does not exist"):
        build(BuildOptions(target="x86-cpu", checkpoint=str(tmp_path / "none.pt"), log=lambda m: None))


class _Clock:
    """A counted clock for ``edgevit.measure``: it moves only when a fake engine runs, by that engine's
    latency, so every timing outcome here is fixed by the fakes and never by the host."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def counted_clock(monkeypatch):
    import edgevit.measure as measure

    clock = _Clock()
    monkeypatch.setattr(measure, "clock", clock)
    monkeypatch.setattr(measure, "pause", lambda s: None)
    return clock


class _NoisyRunner(Runner):
    """Disagrees with the reference on every tenth row unless it is the FP32 engine; each call advances the
    counted clock by its engine's latency."""

    def __init__(self, ref, precision, seconds, clock):
        self.ref, self.precision, self.i, self.seconds, self.clock = ref, precision, 0, seconds, clock
        self.input_shape, self.output_shape = (1, 3, 32, 32), (1, 10)

    def infer(self, batch):
        row = self.ref[self.i % len(self.ref)].copy()
        if self.precision == "int8" and self.i % 10 == 0:
            row = np.roll(row, 1)  # a different top-1
        self.i += 1
        if self.clock is not None:
            self.clock.now += self.seconds
        return row[None]


class _FakeBackend(Backend):
    """Candidates of known accuracy and latency: int8 (misses the gate), int8-mixed (escalation, misses too),
    bf16 (exact, fast), fp32 (exact, slow)."""

    name, library = "fake", "numpy"

    def __init__(self, ref, latency=None, clock=None):
        self.ref, self.calls, self.clock = ref, [], clock
        self.latency = latency or {"int8": 0.0005, "int8-mixed": 0.0005, "bf16": 0.001, "fp32": 0.003}

    def recipes(self, precision, profile):
        if precision == "int8":
            return [Candidate("int8", "int8", "ptq", level=0),
                    Candidate("int8-mixed", "int8", "mixed", level=1, escalates="int8")]
        if precision == "bf16":
            return [Candidate("bf16", "bf16", "hint")]
        return super().recipes(precision, profile)

    def compile(self, onnx_path, out_dir, name, candidate, calib, profile):
        self.calls.append(candidate.id)
        (Path(out_dir) / f"{name}.{candidate.id}").write_text("engine")
        return EngineSpec(self.name, candidate.precision, f"{name}.{candidate.id}", settings={"id": candidate.id})

    def load(self, bundle_dir, spec):
        return _NoisyRunner(self.ref, spec.precision, self.latency[spec.settings["id"]], self.clock)


def _fake_site(tmp_path, latency, clock, profile_text="precision: [int8, bf16, fp32]\n", n=100):
    """The fake backend's site and job for one preset (r32-k1 of supervit-nano)."""
    from edgevit.build.builder import static_job
    from edgevit.build.artifacts import Site
    from edgevit.build.pipeline import Checks
    from edgevit.build.profiles import load_profile

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(n, 10)).astype(np.float32)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "p.yaml").write_text("name: fake\ndevice: {kind: cpu}\nbackend: onnxruntime\n" + profile_text)
    profile = load_profile(str(tmp_path / "p.yaml"))
    backend = _FakeBackend(ref, latency, clock)
    bundle = tmp_path / "b"
    bundle.mkdir(exist_ok=True)
    site = Site(backend, profile, Cache(tmp_path / "c"), bundle, np.zeros((4, 3, 32, 32), np.float32), "calib")
    checks = Checks(np.zeros((n, 3, 32, 32), np.float32), ref.argmax(-1), {"r32-k1": ref}, profile.accuracy)
    return backend, site, static_job(site, tmp_path / "m.onnx", "r32-k1", checks)


def _fake_build(tmp_path, clock, latency=None):
    from edgevit.build.builder import Probing, build_candidates, engine_entry, measure_candidates
    from edgevit.models import create_model

    backend, site, job = _fake_site(tmp_path, latency, clock)
    cands = build_candidates(site, job, create_model("supervit-nano").preset("r32-k1"), Probing())
    measure_candidates({"fake": site}, {("r32-k1", "fake"): cands}, job.checks.x, lambda m: None)
    entry = engine_entry(cands, site.bundle_dir, site.profile, measured=True).to_dict()
    return backend, cands, entry, site.bundle_dir


def test_int8_that_misses_the_gate_escalates_then_the_fastest_passing_candidate_ships(tmp_path, counted_clock):
    backend, cands, entry, bundle = _fake_build(tmp_path, counted_clock)
    assert backend.calls == ["int8", "int8-mixed", "bf16", "fp32"]
    by_id = {c["id"]: c for c in entry["candidates"]}
    assert not by_id["int8"]["passed"] and "agreement 90.00%" in by_id["int8"]["reason"]
    assert by_id["int8"]["gate"]["samples"] == 100
    assert by_id["bf16"]["passed"] and by_id["fp32"]["passed"] and by_id["fp32"]["floor"]
    assert entry["chosen"]["id"] == "bf16" and entry["precision"] == "bf16"
    assert entry["fallback"]["from"] == "int8" and entry["fallback"]["to"] == "bf16"
    assert entry["latency_ms"]["p50"] == 1.0 and by_id["fp32"]["latency_ms"]["p50"] == 3.0   # the clock counts
    # Failed and unchosen candidates do not ship; the chosen one does.
    assert sorted(p.name for p in bundle.iterdir()) == ["r32-k1.bf16"]


def test_a_passing_candidate_slower_than_fp32_does_not_ship(tmp_path, counted_clock):
    _, _, entry, bundle = _fake_build(tmp_path, counted_clock, latency={"int8": 0.0005, "int8-mixed": 0.0005,
                                                                         "bf16": 0.004, "fp32": 0.002})
    assert entry["chosen"]["id"] == "fp32" and "beat fp32" in entry["chosen"]["why"]
    assert "faster in 0/5 rounds" in entry["candidates"][2]["vs_floor"]
    assert sorted(p.name for p in bundle.iterdir()) == ["r32-k1.fp32"]


class _WakingRunner(_NoisyRunner):
    """Pays ``wake`` seconds more when it was idle for 10 ms or more before a call, as an engine whose worker
    threads went to sleep does; the counted clock tells it how long it was idle."""

    def __init__(self, *args, wake: float = 0.0):
        super().__init__(*args)
        self.wake, self.last = wake, None

    def infer(self, batch):
        idle = self.last is None or self.clock.now - self.last >= 0.010
        if idle:
            self.clock.now += self.wake
        out = super().infer(batch)
        self.last = self.clock.now
        return out


@pytest.mark.parametrize("interval_ms, chosen", [(0, "int8"), (33, "bf16")])
def test_the_latency_pass_times_each_request_after_the_profiles_request_interval(tmp_path, counted_clock,
                                                                                 monkeypatch, interval_ms, chosen):
    """INT8 is faster back to back but pays 2 ms after idle; timed as a device serving a request every 33 ms,
    the build ships the engine that is faster there, and the figures say under which interval they were taken."""
    from edgevit.build.builder import Probing, build_candidates, engine_entry, measure_candidates
    from edgevit.models import create_model

    import edgevit.measure as measure

    pauses = []

    def pause(s):
        pauses.append(s)
        counted_clock.now += s

    monkeypatch.setattr(measure, "pause", pause)
    latency = {"int8": 0.0005, "int8-mixed": 0.0005, "bf16": 0.001, "fp32": 0.003}
    backend, site, job = _fake_site(tmp_path, latency, counted_clock, n=1000, profile_text=(
        f"precision: [int8, bf16, fp32]\nruntime: {{request_interval_ms: {interval_ms}}}\n"))
    backend.load = lambda bundle_dir, spec: _WakingRunner(
        backend.ref, "bf16" if spec.precision == "int8" else spec.precision,   # every candidate passes the gate
        latency[spec.settings["id"]], counted_clock, wake=0.002 if spec.precision == "int8" else 0.0)
    assert site.profile.request_interval_s == interval_ms / 1e3
    cands = build_candidates(site, job, create_model("supervit-nano").preset("r32-k1"), Probing())
    measure_candidates({"fake": site}, {("r32-k1", "fake"): cands}, job.checks.x, lambda m: None)
    entry = engine_entry(cands, site.bundle_dir, site.profile, measured=True).to_dict()
    by_id = {c["id"]: c for c in entry["candidates"]}
    assert entry["chosen"]["id"] == chosen
    if interval_ms:
        assert by_id["int8"]["latency_ms"]["p50"] == 2.5 and by_id["bf16"]["latency_ms"]["p50"] == 1.0
        assert by_id["int8"]["latency_ms"]["interval_ms"] == 33 and pauses.count(0.033) >= 5 * 5
    else:
        assert by_id["int8"]["latency_ms"]["p50"] == 0.5 and "interval_ms" not in by_id["int8"]["latency_ms"]
        assert 0.033 not in pauses


def test_a_request_interval_outside_its_range_is_named():
    from edgevit.build.profiles import load_profile

    with pytest.raises(EdgevitError, match="request_interval_ms"):
        load_profile("x86-cpu").with_overrides(**{"runtime.request_interval_ms": -1})


def _fake_candidates(tmp_path, latency, clock, measured=True, **probing):
    """build_candidates on the fake backend as on a host that is the target (``measured``)."""
    from edgevit.build.builder import Probing, build_candidates
    from edgevit.models import create_model

    backend, site, job = _fake_site(tmp_path, latency, clock)
    cands = build_candidates(site, job, create_model("supervit-nano").preset("r32-k1"),
                             Probing(measured, **probing))
    return backend, cands, {r["id"]: r for r in cands.records}


def test_an_escalation_is_tried_only_where_the_failed_candidate_was_faster_than_the_floor(tmp_path, counted_clock):
    fast = {"int8": 0.0005, "int8-mixed": 0.0005, "bf16": 0.001, "fp32": 0.003}
    backend, _, _ = _fake_candidates(tmp_path / "a", fast, counted_clock)
    assert backend.calls == ["int8", "fp32", "int8-mixed", "bf16"]   # the floor is built first, for the probe
    slow = {"int8": 0.004, "int8-mixed": 0.004, "bf16": 0.001, "fp32": 0.002}
    backend, cands, by_id = _fake_candidates(tmp_path / "b", slow, counted_clock)
    assert backend.calls == ["int8", "fp32", "bf16"]
    assert by_id["int8-mixed"]["skipped"] and by_id["int8-mixed"]["reason"].startswith("not tried: int8")
    assert "faster in 0/5 rounds" in by_id["int8-mixed"]["reason"]
    assert [r["id"] for r in cands.records] == ["int8", "int8-mixed", "bf16", "fp32"]   # preference order


def test_a_precision_slower_than_the_floor_on_the_largest_preset_is_not_built_for_the_others(tmp_path,
                                                                                             counted_clock):
    latency = {"int8": 0.004, "int8-mixed": 0.004, "bf16": 0.001, "fp32": 0.002}
    _, largest, _ = _fake_candidates(tmp_path / "a", latency, counted_clock, probe=True)
    # int8 failed the gate and was slower; bf16 passed and was faster: only int8 is ruled out.
    assert set(largest.slower) == {"int8"} and "int8 took 2.00x the time of fp32" in largest.slower["int8"]
    assert "slower in 5/5 rounds" in largest.slower["int8"]
    backend, cands, by_id = _fake_candidates(tmp_path / "b", latency, counted_clock, not_built=largest.slower)
    assert backend.calls == ["bf16", "fp32"]
    assert by_id["int8"]["skipped"] and by_id["int8"]["reason"] == largest.slower["int8"]
    assert "int8-mixed" not in by_id and [r.id for r in cands.results if r.passed] == ["bf16", "fp32"]
    # Without a measurement (the build host is not the target) nothing is probed or ruled out.
    _, unmeasured, _ = _fake_candidates(tmp_path / "c", latency, counted_clock, measured=False, probe=True)
    assert unmeasured.slower == {}


def test_the_int8_bf16_recipe_is_the_nncf_engine_with_bf16_pinned_for_its_float_ops(built, tmp_path):
    """Built from the same graph and calibration as ``int8``, it differs only in the precision the CPU plugin is
    told to run the ops left in float; the bundle records it (compiling needs no bf16 CPU, running it does)."""
    from edgevit.backends.openvino import BACKEND as OV
    from edgevit.build.profiles import load_profile

    out, _, _ = built
    profile = load_profile("x86-cpu")
    calib = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    cands = {c.id: c for c in OV.recipes("int8", profile)}
    spec = OV.compile(out / "onnx" / "r32-k1.onnx", tmp_path, "r32-k1", cands["int8-bf16"], calib, profile)
    base = OV.compile(out / "onnx" / "r32-k1.onnx", tmp_path, "r32-k1", cands["int8"], calib, profile)
    assert spec.precision == base.precision == "int8" and spec.file.endswith("r32-k1.int8-bf16.xml")
    assert spec.settings["inference_precision"] == "bf16" and base.settings["inference_precision"] == "f32"
    assert {k: v for k, v in spec.settings.items() if k != "inference_precision"} == \
        {k: v for k, v in base.settings.items() if k != "inference_precision"}
    assert spec.quantization == base.quantization
    m = read_manifest(out).to_dict()
    for p in m["presets"]:
        e = p["engines"]["openvino"]
        rec = {c["id"]: c for c in e["candidates"]}["int8-bf16"]
        assert rec.get("skipped") or "passed" in rec, rec        # built and gated, or skipped with why
        if e["chosen"]["id"] == "int8-bf16":
            assert e["engine"]["settings"]["inference_precision"] == e["inference_precision"] == "bf16"


def test_a_candidate_the_host_cannot_run_is_recorded_with_why(monkeypatch):
    """On a CPU without bf16 kernels both bf16 recipes are skipped with why; with them, neither is (the ISA is
    made up both ways, so the rule is checked on every host)."""
    import edgevit.host as host
    from edgevit.backends.openvino import BACKEND as OV
    from edgevit.build.profiles import load_profile

    real = host.cpu_info()
    for features, has_bf16 in ((["avx2", "avx512_vnni", "avx512_bf16"], True), (["avx2"], False)):
        monkeypatch.setattr(host, "cpu_info", lambda f=features: {**real, "features": f})
        cands = {c.id: c for c in OV.candidates(load_profile("x86-cpu"))}
        assert [c for c in cands] == ["int8", "int8-bf16", "int8-mixed", "bf16", "fp32"] and cands["fp32"].floor
        for cid in ("bf16", "int8-bf16"):
            assert (cands[cid].skip is None) == has_bf16
            if not has_bf16:
                assert "AVX512-BF16" in cands[cid].skip
        assert cands["int8"].skip is None and cands["int8-bf16"].precision == "int8"


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


@pytest.mark.full
def test_default_build_ships_the_fastest_engine_that_passes_the_gate(default_training, tmp_path):
    """Every preset and backend of the embedded default: the chosen engine passes the gate and is not slower
    than the preset's FP32 candidate measured in the same pass. Which precision wins is the host's business."""
    ckpt, _ = default_training
    logs = []
    t0 = time.perf_counter()
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(ckpt), out=str(tmp_path / "b"),
                             cache_dir=str(tmp_path / "cache"), log=logs.append))
    seconds = time.perf_counter() - t0
    m = read_manifest(out).to_dict()
    assert len(m["presets"]) == 12
    for p in m["presets"]:
        for b in ("openvino", "onnxruntime"):
            _check_choice(p["name"], b, p["engines"][b])
    assert any(p["pareto"] for p in m["presets"])
    assert sum(m["engine_mix"]["defaults"].values()) == 12
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
    e = read_manifest(out).to_dict()["presets"][0]["engines"]["onnxruntime"]
    assert e["precision"] == "fp32" and e["fallback"]["from"] == "fp16" and e["fallback"]["reason"]
    (fp16,) = [c for c in e["candidates"] if c["precision"] == "fp16"]
    assert fp16["skipped"] and "does not build fp16 on this host" in fp16["reason"]


def test_a_registered_backend_works_through_build_load_and_bench(quick_checkpoint, tmp_path):
    """Adding a backend touches no generic code: a toy one (ONNX Runtime under another name, with a profile
    section of its own) is registered, named by a profile, built, loaded and benchmarked."""
    import edgevit
    from edgevit.backends.base import register_backend, unregister_backend
    from edgevit.backends.onnxruntime import OnnxRuntimeBackend
    from edgevit.bench.run import BenchOptions, run_bench
    from edgevit.build.profiles import load_profile
    from edgevit.fields import F

    class Twin(OnnxRuntimeBackend):
        name = "ort-twin"
        profile_section = {"note": F(str, "a toy")}

        def recipes(self, precision, profile):
            return [c for c in super().recipes(precision, profile) if c.id in ("int8-dynamic", "fp32")]

    register_backend(Twin())
    try:
        (tmp_path / "toy.yaml").write_text("name: toy\ndevice: {kind: cpu}\nbackend: ort-twin\n"
                                           "precision: [int8, fp32]\nort-twin: {note: mine}\n")
        assert load_profile(str(tmp_path / "toy.yaml")).to_dict()["ort-twin"] == {"note": "mine"}
        with pytest.raises(EdgevitError, match=r"ort-twin: unknown key 'colour'; allowed keys: note"):
            (tmp_path / "bad.yaml").write_text("name: toy\ndevice: {kind: cpu}\nbackend: ort-twin\n"
                                               "ort-twin: {colour: red}\n")
            load_profile(str(tmp_path / "bad.yaml"))
        out = build(BuildOptions(target=str(tmp_path / "toy.yaml"), checkpoint=str(quick_checkpoint),
                                 presets=["r16-k0.5"], out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"),
                                 log=lambda m: None))
        m = read_manifest(out).to_dict()
        e = m["presets"][0]["engines"]["ort-twin"]
        assert m["backends"] == ["ort-twin"] and e["gate"]["passed"] and e["engine"]["file"].startswith("engines/ort-twin/")
        assert [c["id"] for c in e["candidates"]] == ["int8-dynamic", "fp32"]
        with edgevit.load(out) as rt:
            assert rt.preset("r16-k0.5").backend == "ort-twin"
            assert len(rt.predict([np.zeros((8, 8), np.uint8)]).labels) == 1
        result = run_bench(BenchOptions(bundle=str(out), duration_s=0.1, repeats=1, warmup_s=0.01,
                                        log=lambda m: None))
        assert {r["backend"] for r in result["results"]} >= {"ort-twin"} and "ort-twin" in result["resident_mb"]
    finally:
        unregister_backend("ort-twin")


@pytest.mark.slow
def test_a_registered_family_works_through_build_load_and_bench(tmp_path):
    """Adding a model family touches no generic code: a toy one (a small CNN with two resolution presets, its
    own recipe and training step, and a foreign checkpoint layout) is registered, trained by the build,
    exported, built, loaded and benchmarked, and its layout is read by load_checkpoint."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import edgevit
    from edgevit.bench.run import BenchOptions, run_bench
    from edgevit.build.checkpoints import load_checkpoint
    from edgevit.models import Family, ForeignLayout, Preset, create_model, family_of, register_model
    from edgevit.models.base import plain_step, register_family
    from edgevit.models.presets import PresetLookup
    from edgevit.models.registry import checked_options, unregister_family

    class ToyNet(PresetLookup, nn.Module):
        family = "toy"

        def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 8, resolutions=(16, 32)):
            super().__init__()
            self.config = dict(num_classes=num_classes, in_chans=in_chans, width=width, resolutions=list(resolutions))
            self.num_classes, self.in_chans, self.resolutions, self.keep_rates = num_classes, in_chans, list(resolutions), [1.0]
            self.img_size = self.resolutions[-1]
            self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
            self.head = nn.Linear(width, num_classes)

        def presets(self):
            return [Preset(f"r{r}", r, 1.0, flops=r * r * 27 * self.conv.out_channels) for r in self.resolutions]

        def check_preset(self, img_size, keep_rate=1.0):
            if img_size not in self.resolutions or keep_rate != 1.0:
                raise EdgevitError(f"toy: no preset at {img_size} px, keep {keep_rate}")

        def forward_features(self, x, img_size=None, keep_rate=1.0):
            if img_size is not None and img_size != x.shape[-1]:
                x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
            return F.relu(self.conv(x)).mean(dim=(2, 3))

        def forward_head(self, x):
            return self.head(x)

        def forward(self, x, img_size=None, keep_rate=1.0):
            return self.forward_head(self.forward_features(x, img_size, keep_rate))

    steps = []

    def toy_step(model, x, y, rng, label_smoothing=0.1):
        steps.append(len(x))
        return plain_step(model, x, y, rng, label_smoothing)

    def foreign(state, model_name, path):   # a layout that calls the conv "stem"
        state = {k.replace("stem.", "conv."): v for k, v in state.items()}
        return create_model(model_name or "toy-a", num_classes=state["head.weight"].shape[0]), state

    register_family(Family(name="toy", default_variant="toy-a", train_step=toy_step,
                           recipe=dict(epochs=1, batch_size=32, warmup_epochs=0),
                           foreign_layouts=(ForeignLayout("toy-stem", lambda s: "stem.weight" in s, foreign,
                                                          "toy: stem.weight"),)))
    register_model("toy-a", family="toy")(lambda **kw: ToyNet(**checked_options(ToyNet, "toy", kw)))
    try:
        with pytest.raises(EdgevitError, match="unknown toy option"):
            create_model("toy", depth=3)
        assert family_of(create_model("toy")).name == "toy"
        out = build(BuildOptions(target="x86-cpu", model="toy", out=str(tmp_path / "b"),
                                 cache_dir=str(tmp_path / "c"), log=lambda m: None))
        assert steps and set(steps) == {32}          # the family's step ran, with its recipe's batch size
        m = read_manifest(out).to_dict()
        assert m["model"]["family"] == "toy" and sorted(p["name"] for p in m["presets"]) == ["r16", "r32"]
        for p in m["presets"]:
            for e in p["engines"].values():
                assert e["gate"]["passed"]
        with edgevit.load(out) as rt:
            assert len(rt.predict([np.zeros((8, 8), np.uint8)] * 2).labels) == 2
        result = run_bench(BenchOptions(bundle=str(out), duration_s=0.1, repeats=1, warmup_s=0.01,
                                        log=lambda m: None))
        assert {r["backend"] for r in result["results"]} >= {"torch", "openvino", "onnxruntime"}

        ck = load_checkpoint(out / m["checkpoint"])
        foreign_file = tmp_path / "foreign.pt"
        torch.save({k.replace("conv.", "stem."): v for k, v in ck.model.state_dict().items()}, foreign_file)
        again = load_checkpoint(foreign_file)
        assert again.layout == "toy-stem"
        torch.testing.assert_close(again.model.conv.weight, ck.model.conv.weight)
    finally:
        unregister_family("toy")


@pytest.mark.slow
def test_the_build_stages_run_alone(quick_checkpoint, tmp_path):
    """Each stage takes and returns typed values and can be called on its own: plan -> references -> engines
    -> choose -> assemble gives a manifest the shipped schema accepts, with no bundle written."""
    from edgevit.build.builder import Engines, Plan, assemble, choose_engines, plan_build, references, static_engines
    from edgevit.build.cache import Cache
    from edgevit.manifest import Manifest, parse

    # FP32 only: the stages' plumbing is under test here, quantization everywhere else.
    opts = BuildOptions(target="x86-cpu", checkpoint=str(quick_checkpoint), presets=["r16-k0.5"], precision=["fp32"],
                        out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"), measure=False, log=lambda m: None)
    cache = Cache(opts.cache_dir)
    plan = plan_build(opts, cache)
    assert isinstance(plan, Plan) and [p.name for p in plan.presets] == ["r16-k0.5"] and not plan.measure
    refs = references(plan)
    assert refs["r16-k0.5"].shape == (len(plan.vx), plan.model.num_classes)
    work = tmp_path / "work"
    work.mkdir()
    with cache.scratch("compiled") as compiled:
        engines = static_engines(plan, refs, cache, work, str(compiled))
        assert isinstance(engines, Engines) and [e.name for e in engines.entries] == ["r16-k0.5"]
        entries = choose_engines(plan, engines, work)
    manifest = parse({**assemble(plan, entries, None, 1.0).to_dict(), "files": {}}, "the assembled manifest")
    assert isinstance(manifest, Manifest) and not (tmp_path / "b").exists()
    preset = manifest.preset("r16-k0.5")
    assert set(preset.engines) == {"openvino", "onnxruntime"} and preset.default_backend() == "openvino"
    for e in preset.engines.values():
        assert e.gate["passed"] and (work / e.engine["file"]).is_file()


def test_a_memory_budget_moves_the_presets_that_save_the_most_per_ms_lost():
    from edgevit.build.budget import Option, fit

    options = {"big": [Option("ov", 10.0, 100.0), Option("ort", 12.0, 40.0)],      # 60 MB for 2 ms
               "small": [Option("ov", 3.0, 100.0), Option("ort", 3.1, 40.0)]}      # 60 MB for 0.1 ms
    current = {"big": "ov", "small": "ov"}
    assert fit(options, current, 200.0) == (current, 200.0)                          # fits: nothing moves
    assert fit(options, current, 150.0) == ({"big": "ov", "small": "ort"}, 140.0)   # the cheap move first
    assert fit(options, current, 100.0) == ({"big": "ort", "small": "ort"}, 80.0)
    assert fit(options, current, 10.0) == ({"big": "ort", "small": "ort"}, 80.0)    # none fits: the smallest set


def test_a_shared_engine_counts_once_and_leaves_only_when_no_preset_runs_on_it():
    """A --shared-weights build: each backend's engine serves every preset and holds its memory whether one
    preset runs on it or twelve. Moving some presets off it saves nothing; the budget is met by moving all."""
    from edgevit.build.budget import Option, fit, set_mb

    presets = ("a", "b", "c")
    ov, ort = Option("ov", 10.0, 294.0, shared=True), Option("ort", 11.0, 40.0, shared=True)
    options = {p: [ov, ort] for p in presets}
    current = {p: "ov" for p in presets}
    assert set_mb(options, current) == 294.0 and set_mb(options, {"a": "ov", "b": "ort", "c": "ort"}) == 334.0
    assert fit(options, current, 400.0) == (current, 294.0)
    assert fit(options, current, 172.0) == ({p: "ort" for p in presets}, 40.0)   # all of them, not a split
    assert fit(options, current, 10.0) == ({p: "ort" for p in presets}, 40.0)    # none fits: the smallest set
    # per-preset engines beside a shared one: the shared engine's MB once, however many presets move to it
    per = {"big": [Option("ov", 10.0, 100.0), Option("ort", 12.0, 40.0, shared=True)],
           "small": [Option("ov", 3.0, 100.0), Option("ort", 3.1, 40.0, shared=True)]}
    assert fit(per, {"big": "ov", "small": "ov"}, 150.0) == ({"big": "ov", "small": "ort"}, 140.0)
    assert fit(per, {"big": "ov", "small": "ov"}, 100.0) == ({"big": "ort", "small": "ort"}, 40.0)


def test_a_shared_build_takes_the_fastest_candidate_of_a_backend_that_fits_the_budget():
    """On one backend, shared candidates differ in memory (OpenVINO's branches engine against its one
    dynamic-shape graph): over the budget, the speed rule's pick gives way to the fastest candidate that
    fits, measured only as far as needed; where none fits, the smallest; each figure goes into the records."""
    from edgevit.backends.base import Candidate, EngineSpec
    from edgevit.build.budget import within_budget
    from edgevit.build.pipeline import CandidateResult

    def result(cid, p50, passed=True):
        rec = {"id": cid, "latency_ms": {"p50": p50}}
        return CandidateResult(Candidate(cid, "int8", "r"), EngineSpec("openvino", "int8", f"{cid}.xml"),
                               records={"a": dict(rec), "b": dict(rec)}, passed=passed)

    branches, graph, weights, failed = (result("int8-branches", 10.0), result("int8-graph", 12.0),
                                        result("int8-weights", 15.0), result("int8-other", 11.0, passed=False))
    results = [branches, weights, graph, failed]
    mb = {"int8-branches": 300.0, "int8-graph": 160.0, "int8-weights": 120.0, "int8-other": 50.0}
    asked, logs = [], []

    def mb_of(r):
        asked.append(r.id)
        return mb[r.id]

    assert within_budget(results, branches, "fastest", 400.0, mb_of, logs.append) == (branches, "fastest")
    assert asked == ["int8-branches"] and branches.records["b"]["resident_mb"] == 300.0
    chosen, why = within_budget(results, branches, "fastest", 172.0, mb_of, logs.append)
    assert chosen is graph and "within the memory budget (172 MB): 160.0 MB" in why and "int8-branches" in why
    assert asked == ["int8-branches", "int8-graph"]          # measured once each, the failed one never
    chosen, why = within_budget(results, branches, "fastest", 100.0, mb_of, logs.append)
    assert chosen is weights and why.startswith("no candidate fits the memory budget (100 MB): the smallest")
    assert "int8-other" not in asked
    assert within_budget(results, None, "none passed", 100.0, mb_of, logs.append) == (None, "none passed")


def test_the_build_applies_the_profiles_memory_budget_and_measures_the_set(built):
    import types

    import jsonschema

    from edgevit.build import budget
    from edgevit.build.profiles import load_profile
    from edgevit.manifest import schema

    out, _, _ = built
    m = read_manifest(out)
    options = budget.options_of(m.presets)
    assert all(len(o) == 2 for o in options.values())          # both backends measured, with resident MB
    smallest = sum(min(o.mb for o in opts) for opts in options.values())
    current = sum(next(o.mb for o in options[p.name] if o.backend == p.default_backend()) for p in m.presets)
    logs = []
    plan = types.SimpleNamespace(profile=load_profile("x86-cpu").with_overrides(
        **{"runtime.memory_budget_mb": max(1.0, smallest + 0.01)}), opts=types.SimpleNamespace(log=logs.append))
    memory = budget.apply(plan, m.presets, dict(m.memory), out)
    rec = memory["budget"]
    assert rec["default_set_mb"] > 0
    if abs(rec["default_set_mb"] - rec["mb"]) > 0.05:   # the record rounds to 0.1 MB: closer says nothing
        assert rec["fits"] == (rec["default_set_mb"] <= rec["mb"])
    for p in m.presets:                                        # every default now has the smallest engine
        assert next(o.mb for o in options[p.name] if o.backend == p.default_backend()) == \
            min(o.mb for o in options[p.name])
        if p.name in rec["moved"]:
            assert "within the memory budget" in p.default["why"]
    assert bool(rec["moved"]) == (current > smallest + 0.01)
    m.memory = memory
    jsonschema.validate(json.loads(json.dumps(m.to_dict())), schema())
    assert any(line.startswith("[memory] budget") for line in logs)
    from edgevit.manifest_report import memory_lines

    assert any(line.startswith("budget") for line in memory_lines(m.to_dict()))
    plan.profile = load_profile("x86-cpu")                     # no budget: nothing changes
    assert budget.apply(plan, m.presets, {"how": "", "backends": {}}, out) == {"how": "", "backends": {}}
