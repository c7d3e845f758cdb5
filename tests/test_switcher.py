import threading
import time

import numpy as np
import pytest
import yaml

from edgevit.errors import EdgevitError
from edgevit.runtime.policies import (
    BatteryPolicy,
    CompositePolicy,
    FixedPolicy,
    LatencyPolicy,
    ThermalPolicy,
    build_policy,
)
from edgevit.runtime.runtime import PresetInfo
from edgevit.runtime.signals import BatterySource, JetsonSource, ThermalSource, TraceSource, load_trace
from edgevit.runtime.switcher import Pacing, Switcher


class FakeRuntime:
    """The part of Runtime a switcher uses: candidates (cheapest first), current, use()."""

    def __init__(self, n=4):
        self.candidates = [PresetInfo(f"p{i}", 16 + 4 * i, 1.0, 0.01 * (i + 1), "int8", 0.9 + 0.02 * i,
                                      1.0 + i, True) for i in range(n)]
        self.current = self.candidates[-1].name

    def use(self, name):
        self.current = name


def test_battery_trace_with_noise_only_steps_down_once_per_threshold():
    """100% -> 5% with +-3% noise: switches only go down, at most one per threshold crossing."""
    rng = np.random.default_rng(0)
    rt = FakeRuntime(4)
    sw = Switcher(rt, BatteryPolicy([80, 50, 20], hysteresis_pct=5), pacing=Pacing(min_dwell_s=10, debounce=3))
    for t in range(0, 3600, 5):
        level = 100 - 95 * t / 3600 + rng.uniform(-3, 3)
        sw.tick(now=float(t), readings={"battery_pct": level, "charging": False})
    order = [p.name for p in rt.candidates]
    steps = [(order.index(e.from_preset), order.index(e.to_preset)) for e in sw.events]
    assert steps == [(3, 2), (2, 1), (1, 0)]                  # one per threshold, always down
    for e, threshold in zip(sw.events, (80, 50, 20)):
        assert e.signals["battery_pct"] <= threshold and "battery_pct" in e.reason


def test_battery_without_hysteresis_or_debounce_would_flap():
    """The same noise with no hysteresis, no debounce and no dwell flips back and forth: the guards matter."""
    rng = np.random.default_rng(0)
    rt = FakeRuntime(4)
    sw = Switcher(rt, BatteryPolicy([80, 50, 20], hysteresis_pct=0), pacing=Pacing(min_dwell_s=0, debounce=1))
    for t in range(0, 3600, 5):
        sw.tick(now=float(t), readings={"battery_pct": 100 - 95 * t / 3600 + rng.uniform(-3, 3)})
    assert len(sw.events) > 6


def test_charging_lifts_the_limit_and_dwell_delays_it():
    rt = FakeRuntime(4)
    sw = Switcher(rt, BatteryPolicy(), pacing=Pacing(min_dwell_s=30, debounce=1))
    sw.tick(now=0, readings={"battery_pct": 10, "charging": False})
    assert rt.current == "p0"
    assert sw.tick(now=10, readings={"battery_pct": 10, "charging": True}) is None   # within the dwell time
    ev = sw.tick(now=31, readings={"battery_pct": 10, "charging": True})
    assert rt.current == "p3" and ev.reason.startswith("charging")


def test_a_flickering_charger_does_not_move_the_preset():
    rt = FakeRuntime(4)
    sw = Switcher(rt, BatteryPolicy(), pacing=Pacing(min_dwell_s=0, debounce=3))
    for t in range(40):   # on for one reading in three: a loose contact, not a charger
        sw.tick(now=float(t), readings={"battery_pct": 10, "charging": t % 3 == 2})
    assert rt.current == "p0" and [e.to_preset for e in sw.events] == ["p0"]
    for t in range(40, 43):
        sw.tick(now=float(t), readings={"battery_pct": 10, "charging": True})
    assert rt.current == "p3" and sw.events[-1].reason.startswith("charging")


def test_debounce_ignores_a_single_spike():
    rt = FakeRuntime(4)
    sw = Switcher(rt, ThermalPolicy(limit_c=85, hysteresis_c=3), pacing=Pacing(min_dwell_s=0, debounce=3))
    for t, temp in enumerate([60, 60, 95, 60, 60]):
        sw.tick(now=float(t), readings={"temperature_c": temp})
    assert sw.events == [] and rt.current == "p3"
    for t, temp in enumerate([90, 90, 90], start=10):
        sw.tick(now=float(t), readings={"temperature_c": temp})
    assert rt.current == "p0" and "temperature_c" in sw.events[-1].reason


def test_thermal_hysteresis_on_the_way_back():
    pol = ThermalPolicy(limit_c=85, hysteresis_c=3)     # thresholds 75, 80, 85
    assert pol.update_level(81) == 2
    assert pol.update_level(79) == 2                     # below 80 but not below 77
    assert pol.update_level(76.5) == 1
    assert pol.update_level(60) == 0


def test_latency_policy_deadline_queue_and_headroom():
    ladder = FakeRuntime(4).candidates                   # seeded p50s: 1, 2, 3, 4 ms
    pol = LatencyPolicy(deadline_ms=4.0, margin=0.8, queue_limit=2, hysteresis_pct=10)
    assert pol.propose({}, ladder, 3).index == 2         # 3 ms <= 3.2 ms; 4 ms is over
    live = {"latency_p90_ms": {"p2": 3.5, "p1": 1.5}}     # live measurements override the seeds
    assert pol.propose(live, ladder, 2).index == 1
    assert pol.propose({"queue_depth": 4}, ladder, 2).index == 0      # two queued over the limit: two down
    # Moving up needs 10 % headroom: 3.0 ms is within 3.2 ms but not within 2.88 ms.
    assert pol.propose({}, ladder, 1).index == 1
    assert pol.propose({"latency_p90_ms": {"p2": 2.8}}, ladder, 1).index == 2
    slow = {"latency_p90_ms": {f"p{i}": 10.0 for i in range(4)}}
    assert pol.propose(slow, ladder, 3).index == 0


def test_composite_takes_the_most_restrictive_and_fixed_pins():
    ladder = FakeRuntime(4).candidates
    comp = CompositePolicy([BatteryPolicy(), ThermalPolicy(85)])
    p = comp.propose({"battery_pct": 90, "temperature_c": 86}, ladder, 3)
    assert p.index == 0 and p.reason.startswith("thermal")
    assert FixedPolicy("p1").propose({}, ladder, 3).index == 1
    with pytest.raises(EdgevitError, match="preset 'p9' is not on this backend's accuracy/latency Pareto front"):
        FixedPolicy("p9").propose({}, ladder, 3)


@pytest.mark.parametrize("spec,needle", [
    ({"policy": "batery"}, "policy: 'batery' is not one of"),
    ({"policy": "battery", "thresholds": [80, "low"]}, "thresholds: expected a list of numbers"),
    ({"policy": "battery", "thresholds": [180]}, "threshold 180.0 is outside 0..100"),
    ({"policy": "battery", "hysterisis_pct": 5}, "unknown key 'hysterisis_pct'"),
    ({"policy": "latency"}, "deadline_ms: required"),
    ({"policy": "latency", "deadline_ms": -3}, "deadline_ms must be > 0"),
    ({"policy": "composite", "members": [{"policy": "thermal", "limit_c": "hot"}]}, "members[0].limit_c: expected a number"),
])
def test_bad_policy_values_name_the_field(spec, needle):
    with pytest.raises(EdgevitError) as e:
        build_policy(spec, "policy file p.yaml")
    assert needle in str(e.value) and "p.yaml" in str(e.value)


def test_trace_replay_and_bad_traces(tmp_path):
    good = tmp_path / "t.csv"
    good.write_text("time_s,battery_pct,charging,cpu_load,temperature_c\n0,100,0,35,40\n10,90,1,50,\n")
    src = TraceSource(good)
    assert src.read(0) == {"battery_pct": 100.0, "charging": False, "cpu_load": 0.35, "temperature_c": 40.0}
    assert src.read(15) == {"battery_pct": 90.0, "charging": True, "cpu_load": 0.5}   # empty cell: absent
    cases = {
        "time_s,battery_pct\n0,101\n": "line 2, battery_pct: 101.0 is outside 0..100",
        "time_s,battery\n0,50\n": "unknown column 'battery'",
        "time_s,battery_pct\n0,fifty\n": "line 2, battery_pct: 'fifty' is not a number",
        "time_s,charging\n0,maybe\n": "line 2, charging: charging 'maybe' is not a boolean",
        "time_s,battery_pct\n5,50\n1,40\n": "line 3, time_s: 1.0 is earlier",
        "battery_pct\n50\n": "header must start with time_s",
        "time_s,cpu_load\n0,-0.2\n1,0.5\n": "cpu_load: -0.2 is outside 0..1",
    }
    for i, (text, needle) in enumerate(cases.items()):
        f = tmp_path / f"bad{i}.csv"
        f.write_text(text)
        with pytest.raises(EdgevitError) as e:
            load_trace(f)
        assert needle in str(e.value) and f.name in str(e.value), (needle, str(e.value))


def test_sysfs_signals_and_unavailable_reasons(tmp_path):
    bat = tmp_path / "class/power_supply/BAT0"
    bat.mkdir(parents=True)
    (bat / "type").write_text("Battery\n")
    (bat / "capacity").write_text("42\n")
    (bat / "status").write_text("Discharging\n")
    (tmp_path / "class/power_supply/AC").mkdir()
    (tmp_path / "class/power_supply/AC/type").write_text("Mains\n")
    z = tmp_path / "class/thermal/thermal_zone3"
    z.mkdir(parents=True)
    (z / "temp").write_text("67500\n")
    assert BatterySource(str(tmp_path)).read(0) == {"battery_pct": 42.0, "charging": False}
    assert ThermalSource(str(tmp_path)).read(0) == {"temperature_c": 67.5}
    empty = tmp_path / "empty"
    empty.mkdir()
    b = BatterySource(str(empty), use_psutil=False)
    assert b.read(0) == {} and b.status().startswith("unavailable: no battery")
    assert ThermalSource(str(empty)).status().startswith("unavailable: no thermal zones")
    gpu = tmp_path / "devices/gpu.0"
    gpu.mkdir(parents=True)
    (gpu / "load").write_text("350\n")
    assert JetsonSource(str(tmp_path)).read(0)["gpu_load"] == pytest.approx(0.35)


def test_eight_threads_predict_while_switcher_flips_every_50ms(built):
    """No errors, and every result equals the reference result of the preset it actually ran on."""
    import edgevit
    from edgevit.data.datasets import load_digits
    from edgevit.runtime.policies import Policy, Proposal

    out, _, _ = built
    ds = load_digits()
    images = [ds.val.image(i) for i in range(16)]
    with edgevit.load(out) as rt:
        ref = {p.name: np.stack([rt.predict(im, preset=p.name).logits[0] for im in images]) for p in rt.presets}

        class Flip(Policy):
            name = "flip"

            def propose(self, signals, ladder, current):
                return Proposal(0 if current == len(ladder) - 1 else len(ladder) - 1, "flip")

        errors, checked, used = [], [0], set()
        stop = threading.Event()

        def client(k):
            i = k
            while not stop.is_set():
                try:
                    pred = rt.predict(images[i % 16])
                    used.add(pred.preset)
                    if not np.allclose(pred.logits[0], ref[pred.preset][i % 16], atol=1e-4):
                        errors.append(f"{pred.preset} image {i % 16}: logits differ")
                    checked[0] += 1
                except Exception as e:  # noqa: BLE001 - any failure fails the test
                    errors.append(repr(e))
                i += 1

        # Both presets as candidates, so the flip alternates between them.
        sw = Switcher(rt, Flip(), ladder=rt.presets, pacing=Pacing(interval_s=0.05, min_dwell_s=0.0, debounce=1))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        sw.start()
        # Event-based, not rate-based: run until 150 switches and 500 checked results have happened (a busy
        # host only takes longer), with a generous deadline that only a hang reaches.
        deadline = time.monotonic() + 300
        while (len(sw.events) < 150 or checked[0] <= 500 or used != set(ref)) and time.monotonic() < deadline:
            time.sleep(0.1)
        sw.stop()
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(sw.events) >= 150 and used == set(ref) and checked[0] > 500


def _trace(path, rows):
    path.write_text("time_s,battery_pct,charging,cpu_load,temperature_c\n"
                    + "".join(f"{t},{b},0,0.3,50\n" for t, b in rows))
    return path


def test_simulate_cli_dry_and_real(built, tmp_path):
    from click.testing import CliRunner

    from edgevit.cli import cli

    out, _, _ = built
    trace = _trace(tmp_path / "t.csv", [(t, 100 - t / 4) for t in range(0, 400, 10)])
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({"policy": "fixed", "min_dwell_s": 5}))
    for extra in (["--dry"], []):
        png = tmp_path / f"sim{len(extra)}.png"
        j = tmp_path / f"sim{len(extra)}.json"
        r = CliRunner().invoke(cli, ["simulate", str(out), "--trace", str(trace), "--policy", "battery", "--step", "10",
                                     "--plot", str(png), "--json", str(j)] + extra)
        assert r.exit_code == 0, r.output
        assert "switches:" in r.output and "time per preset:" in r.output and "mean top-1" in r.output
        assert png.stat().st_size > 5000
        import json

        res = json.loads(j.read_text())
        assert abs(sum(res["time_per_preset_s"].values()) - 400) < 1e-6 and res["dry"] == bool(extra)
    r = CliRunner().invoke(cli, ["simulate", str(out), "--trace", str(trace), "--policy", str(policy), "--dry",
                                 "--plot", str(tmp_path / "f.png")])
    assert r.exit_code == 0 and "none" in r.output   # fixed: no switches


def test_simulate_bad_inputs_name_the_field(built, tmp_path):
    from click.testing import CliRunner

    from edgevit.cli import cli

    out, _, _ = built
    bad_trace = _trace(tmp_path / "b.csv", [(0, 100), (10, 120)])
    r = CliRunner().invoke(cli, ["simulate", str(out), "--trace", str(bad_trace), "--dry"])
    assert r.exit_code == 2 and "line 3, battery_pct: 120.0 is outside 0..100" in r.output
    good = _trace(tmp_path / "g.csv", [(0, 100)])
    pol = tmp_path / "p.yaml"
    pol.write_text("policy: battery\nthresholds: [80, 50]\nmin_dwell_s: -1\n")
    r = CliRunner().invoke(cli, ["simulate", str(out), "--trace", str(good), "--policy", str(pol), "--dry"])
    assert r.exit_code == 2 and "p.yaml.min_dwell_s: expected a number >= 0, got -1" in r.output
    r = CliRunner().invoke(cli, ["simulate", str(out), "--trace", str(good), "--policy", "solar", "--dry"])
    assert r.exit_code == 2 and "unknown policy 'solar'" in r.output


def test_members_without_their_signal_abstain():
    """On a host without a battery, a battery+thermal composite still follows the temperature both ways."""
    rt = FakeRuntime(4)
    sw = Switcher(rt, CompositePolicy([BatteryPolicy(), ThermalPolicy(85, 3)]), pacing=Pacing(min_dwell_s=0, debounce=1))
    sw.tick(now=0, readings={"temperature_c": 90})
    assert rt.current == "p0"
    sw.tick(now=1, readings={"temperature_c": 50})
    assert rt.current == "p3"
    assert sw.tick(now=2, readings={}) is None and rt.current == "p3"   # nobody has an opinion: stay


def test_a_better_signal_never_raises_the_level():
    pol = ThermalPolicy(85, hysteresis_c=6)                 # thresholds 75, 80, 85; margin wider than a gap
    assert pol.update_level(76) == 1
    assert pol.update_level(74) == 1                        # better, but not by the margin: stays, never 2
    bat = BatteryPolicy([20, 22], hysteresis_pct=5)
    assert bat.update_level(21) == 1 and bat.update_level(23) == 1


def test_moves_down_ignore_the_dwell_time():
    rt = FakeRuntime(4)
    sw = Switcher(rt, ThermalPolicy(85, 3), pacing=Pacing(min_dwell_s=60, debounce=1))
    sw.tick(now=0, readings={"temperature_c": 76})
    assert rt.current == "p2"
    sw.tick(now=1, readings={"temperature_c": 90})          # one second later, too hot: down at once
    assert rt.current == "p0"
    sw.tick(now=2, readings={"temperature_c": 40})          # cool again: up only after the dwell
    assert rt.current == "p0"
    sw.tick(now=62, readings={"temperature_c": 40})
    assert rt.current == "p3"


def test_switcher_warms_the_target_before_the_swap():
    calls = []

    class Recording(FakeRuntime):
        def warm(self, name):
            calls.append(("warm", name, self.current))

        def use(self, name):
            calls.append(("use", name))
            super().use(name)

    rt = Recording(4)
    Switcher(rt, FixedPolicy("p1"), pacing=Pacing(min_dwell_s=0)).tick(now=0, readings={})
    assert calls == [("warm", "p1", "p3"), ("use", "p1")]   # warmed while p3 still served requests
    calls.clear()
    Switcher(rt, FixedPolicy("p2"), pacing=Pacing(min_dwell_s=0, warm=False)).tick(now=0, readings={})
    assert calls == [("use", "p2")]


def test_profile_policies_never_invent_a_deadline():
    from edgevit.runtime.policies import policy_from_profile

    comp = policy_from_profile("composite", {"battery_thresholds": [80, 50, 20], "thermal_limit_c": 80})
    assert [m.name for m in comp.policies] == ["battery", "thermal"]
    assert [m.name for m in policy_from_profile("composite", {"latency_deadline_ms": 20}).policies] == [
        "battery", "thermal", "latency"]
    with pytest.raises(EdgevitError, match="runtime.latency_deadline_ms is not set"):
        policy_from_profile("latency", {})


def test_dry_simulation_steps_down_when_the_trace_load_rises(built, tmp_path):
    from edgevit.runtime.runtime import load_info
    from edgevit.runtime.simulate import SimOptions, simulate

    out, _, _ = built
    ladder = load_info(out).candidates
    if len(ladder) < 2:
        pytest.skip("the quick bundle's front has a single candidate")
    top = ladder[-1].latency_p90_ms or ladder[-1].latency_ms
    trace = tmp_path / "load.csv"
    trace.write_text("time_s,cpu_load\n" + "".join(f"{t},{0.0 if t < 100 else 0.9}\n" for t in range(0, 200, 10)))
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({"policy": "latency", "deadline_ms": 2 * top, "min_dwell_s": 0}))
    r = simulate(SimOptions(str(out), str(trace), str(policy), dry=True, step_s=10))
    before = {row["preset"] for row in r["timeline"] if row["t"] < 100}
    assert before == {ladder[-1].name}                     # idle host: the most accurate preset fits
    assert r["switches"] and r["switches"][0]["time"] >= 100 and r["switches"][0]["to_preset"] != ladder[-1].name
    assert any(w in r["switches"][0]["reason"] for w in ("p90", "no preset meets"))   # the deadline moved it
