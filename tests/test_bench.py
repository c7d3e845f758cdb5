import json

import pytest
from click.testing import CliRunner

from edgevit.runtime.sensors import RailSensor, RaplSensor, find_sensor
from edgevit.bench.report import plot, rows, to_markdown, to_text
from edgevit.bench.run import BenchOptions, attach_ratios, run_bench
from edgevit.bench.json_schema import SCHEMA
from edgevit.bench.stats import summarize
from edgevit.cli import cli
from edgevit.errors import EdgevitError


def test_summarize_percentiles_on_known_timings():
    s = summarize([list(range(1, 101))])
    assert s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    assert s.max == 100 and s.n == 100 and s.repeats == 1 and s.spread == 0 and s.warning is None


def test_spread_between_repeats_warns_above_ten_percent():
    calm = summarize([[10.0] * 20, [10.5] * 20, [10.2] * 20])
    assert calm.spread == pytest.approx(0.5 / 10.2) and calm.warning is None
    busy = summarize([[10.0] * 20, [12.0] * 20, [10.1] * 20])
    assert busy.spread == pytest.approx(2.0 / 10.1) and "20%" in busy.warning
    # Jitter inside a repeat is not drift: one slow outlier per repeat leaves the medians equal.
    jitter = summarize([[10.0] * 19 + [50.0]] * 3)
    assert jitter.warning is None and jitter.max == 50.0


def test_summarize_rejects_empty():
    with pytest.raises(ValueError):
        summarize([[], []])


def _result(backend, precision, p50, preset="r32-k1", gflops=0.05):
    return {"preset": preset, "backend": backend, "precision": precision, "gflops": gflops,
            "latency_ms": {"p50": p50}}


def test_speedup_and_fraction_of_peak():
    rs = [_result("torch", "fp32", 10.0), _result("openvino", "int8", 2.5), _result("onnxruntime", "fp32", 5.0),
          _result("openvino", "int8", 1.0, preset="r16-k0.5")]
    attach_ratios(rs, {"fp32_gflops": 100.0, "int8_gflops": 400.0})
    assert rs[0]["speedup_vs_torch"] == 1.0 and rs[1]["speedup_vs_torch"] == 4.0 and rs[2]["speedup_vs_torch"] == 2.0
    assert rs[3]["speedup_vs_torch"] is None                    # no baseline for that preset
    assert rs[1]["achieved_gflops"] == pytest.approx(20.0)      # 0.05 GFLOP in 2.5 ms
    assert rs[1]["fraction_of_peak"] == pytest.approx(20.0 / 400.0)
    assert rs[2]["fraction_of_peak"] == pytest.approx(10.0 / 100.0)


def test_theoretical_peak_is_cores_times_clock_times_the_isas_multiply_adds():
    from edgevit.bench.peak import theoretical_peak

    vnni = theoretical_peak(["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], cores=2, mhz=2500.0)
    assert vnni == {"int8": 2 * 2.5 * 128, "bf16": 2 * 2.5 * 64, "fp32": 2 * 2.5 * 32}
    assert theoretical_peak(["avx2"], cores=4, mhz=3000.0) == {"int8": 4 * 3.0 * 32, "fp32": 4 * 3.0 * 16}
    assert theoretical_peak(["amx_int8", "avx512_vnni"], cores=1, mhz=1000.0)["int8"] == 1024
    assert theoretical_peak(["avx512_vnni"], cores=2, mhz=None) == {"int8": None}
    assert theoretical_peak([], cores=2, mhz=2000.0) == {}
    # one 512-bit instruction a cycle halves the AVX-512 rates and leaves AVX2's and AMX's
    half = theoretical_peak(["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], cores=2, mhz=2500.0, avx512_ports=1)
    assert half == {"int8": 2 * 2.5 * 64, "bf16": 2 * 2.5 * 32, "fp32": 2 * 2.5 * 16}
    assert theoretical_peak(["amx_int8", "avx512_vnni"], cores=1, mhz=1000.0, avx512_ports=1)["int8"] == 1024


def test_zen4_runs_512_bit_multiply_adds_at_one_a_cycle_and_zen5_and_intel_at_two():
    from edgevit.bench.peak import avx512_per_cycle, cpu_vendor_family

    zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nprocessor\t: 1\n"
    assert cpu_vendor_family(zen4) == ("AuthenticAMD", 25)
    assert avx512_per_cycle(*cpu_vendor_family(zen4)) == 1
    assert avx512_per_cycle("AuthenticAMD", 26) == 2
    assert avx512_per_cycle("GenuineIntel", 6) == 2
    assert cpu_vendor_family("") == (None, None) and avx512_per_cycle(None, None) == 2


def test_timed_idles_before_each_request_and_does_not_count_the_idle(monkeypatch):
    import edgevit.measure as measure

    now, pauses = [0.0], []
    monkeypatch.setattr(measure, "clock", lambda: now[0])

    def pause(s):
        pauses.append(s)
        now[0] += s

    def work(_):
        now[0] += 0.002

    monkeypatch.setattr(measure, "pause", pause)
    assert measure.timed(work, None, iterations=4, interval_s=0.033) == pytest.approx([2.0] * 4)
    assert pauses == [0.033] * 4
    assert measure.timed(work, None, iterations=3) == pytest.approx([2.0] * 3) and len(pauses) == 4


def test_rapl_sensor_with_wraparound(tmp_path):
    d = tmp_path / "class/powercap/intel-rapl:0"
    d.mkdir(parents=True)
    (tmp_path / "class/powercap/intel-rapl:0:0").mkdir()      # a sub-domain: not summed
    (d / "max_energy_range_uj").write_text("1000000\n")
    (d / "energy_uj").write_text("999000\n")
    sensor, why = find_sensor(str(tmp_path))
    assert isinstance(sensor, RaplSensor) and why == "" and len(sensor.domains) == 1
    sensor.start()
    (d / "energy_uj").write_text("4000\n")                     # wrapped: 1000 + 4000 uJ
    assert sensor.stop() == pytest.approx(0.005)


def test_ina3221_rails_and_no_sensor(tmp_path, monkeypatch):
    hw = tmp_path / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hw.mkdir(parents=True)
    (hw / "in1_label").write_text("VDD_IN\n")
    (hw / "in1_input").write_text("5000\n")    # mV
    (hw / "curr1_input").write_text("2000\n")  # mA -> 10 W
    (hw / "in2_label").write_text("VDD_CPU_GPU_CV\n")
    (hw / "in2_input").write_text("5000\n")
    (hw / "curr2_input").write_text("500\n")
    sensor, _ = find_sensor(str(tmp_path))
    assert isinstance(sensor, RailSensor) and [r[0] for r in sensor.rails] == ["VDD_IN"]  # the board input only
    # A clock that moves 10 ms per reading, counted: the integral is exact however busy the host is.
    import threading
    import types

    import edgevit.runtime.sensors as hardware

    readings, enough = [], threading.Event()

    def perf_counter():
        readings.append(None)
        if len(readings) >= 20:
            enough.set()
        return 0.01 * len(readings)

    monkeypatch.setattr(hardware, "time", types.SimpleNamespace(perf_counter=perf_counter, sleep=lambda s: None))
    sensor.start()
    assert enough.wait(10)
    joules = sensor.stop()
    assert joules == pytest.approx(10.0 * 0.01 * (len(readings) - 1))   # 10 W over every reading's 10 ms
    none, why = find_sensor(str(tmp_path / "empty"))
    assert none is None and "no RAPL" in why and "INA3221" in why


@pytest.fixture(scope="module")
def bench_result(built):
    out, _, _ = built
    return run_bench(BenchOptions(bundle=str(out), batches=[1, 2], warmup_s=0.05, duration_s=0.3, repeats=2))


def test_bench_result_matches_schema_and_covers_every_engine(bench_result):
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(bench_result)), SCHEMA)
    got = {(r["preset"], r["backend"]) for r in bench_result["results"]}
    assert got == {(p, b) for p in ("r32-k1", "r16-k0.5") for b in ("torch", "openvino", "onnxruntime")}
    for r in bench_result["results"]:
        assert r["latency_ms"]["p50"] > 0 and r["latency_ms"]["n"] >= 2
        assert r["throughput_ips"]["1"] > 0 and r["throughput_ips"]["2"] > 0
        assert r["top1_source"] == "manifest" and 0 <= r["top1"] <= 1
        assert (r["speedup_vs_torch"] == 1.0) == (r["backend"] == "torch")
    assert bench_result["host"]["threads"] >= 1 and bench_result["peak"]["fp32_gflops"] > 0
    assert bench_result["energy"]["sensor"] is not None or bench_result["energy"]["note"]


def test_schema_rejects_a_broken_result(bench_result):
    import jsonschema

    bad = json.loads(json.dumps(bench_result))
    del bad["results"][0]["latency_ms"]["p99"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_reports_and_plot_show_every_preset(bench_result, tmp_path):
    text, md = to_text(bench_result), to_markdown(bench_result)
    for name in ("r32-k1", "r16-k0.5"):
        assert name in text and name in md
    assert "img/s@2" in md and "vs torch" in md
    head, body = rows(bench_result)
    assert len(body) == 6
    energy = [row[head.index("mJ/inf")] for row in body]
    if bench_result["energy"]["sensor"] is None:  # no sensor: every energy cell says so, and the note says why
        assert energy == ["n/a"] * 6 and bench_result["energy"]["note"] in md
    else:
        assert all(float(e) > 0 for e in energy)
    assert plot(bench_result, tmp_path / "p.png") == 6
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_accuracy_remeasured_equals_manifest(built):
    out, _, _ = built
    r = run_bench(BenchOptions(bundle=str(out), presets=["r16-k0.5"], backends=["onnxruntime"], baseline=False,
                               warmup_s=0.0, iterations=4, duration_s=None, repeats=1, accuracy=True))
    from edgevit.bundle import read_manifest

    m = read_manifest(out).to_dict()
    (res,) = r["results"]
    assert res["top1_source"] == "measured"
    manifest_top1 = next(p for p in m["presets"] if p["name"] == "r16-k0.5")["engines"]["onnxruntime"]["top1"]
    assert res["top1"] == pytest.approx(manifest_top1, abs=1e-6)


def test_cli_writes_four_outputs_and_names_bad_input(built, tmp_path):
    out, _, _ = built
    j, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    res = CliRunner().invoke(cli, ["bench", str(out), "--presets", "r16-k0.5", "--duration", "0.2", "--warmup", "0",
                                   "--repeats", "1", "--json", str(j), "--md", str(md), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert json.loads(j.read_text())["schema"] == "edgevit-bench" and md.read_text().startswith("# edgevit bench")
    assert png.exists() and "p50 ms" in res.output
    # the bundle's request interval (the build's, 0 here) unless --interval-ms names one; the report says which
    assert json.loads(j.read_text())["settings"]["interval_ms"] == 0 and "requests back to back" in md.read_text()
    res = CliRunner().invoke(cli, ["bench", str(out), "--presets", "r16-k0.5", "--iterations", "3", "--warmup", "0",
                                   "--repeats", "1", "--interval-ms", "5", "--no-baseline", "--json", str(j),
                                   "--md", str(md), "--no-plot"])
    assert res.exit_code == 0, res.output
    assert json.loads(j.read_text())["settings"]["interval_ms"] == 5 and "after 5 ms idle" in md.read_text()
    bad = CliRunner().invoke(cli, ["bench", str(out), "--interval-ms", "-1"])
    assert bad.exit_code == 2 and "--interval-ms" in bad.output
    bad = CliRunner().invoke(cli, ["bench", str(out), "--presets", "r99-k1"])
    assert bad.exit_code == 2 and "unknown preset(s) r99-k1" in bad.output
    bad = CliRunner().invoke(cli, ["bench", str(out), "--batch", "1,x"])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output
    with pytest.raises(EdgevitError, match="nvpmodel"):
        run_bench(BenchOptions(bundle=str(out), power_modes=["MAXN"], duration_s=0.1, repeats=1))
