"""The switcher's candidates: per-backend Pareto fronts from latencies measured interleaved."""
import time

import numpy as np

from edgevit.runtime.runtime import PresetInfo, Runtime
from edgevit.measure import measure_latencies_interleaved
from edgevit.build.validate import mark_pareto, pareto_front
from edgevit.manifest import PresetEntry


def _entries():
    # name, flops, (openvino p50, top1), (onnxruntime p50, top1): the backends disagree on what is cheap
    rows = [("a", 1, (0.20, 0.90), (0.50, 0.90)), ("b", 2, (0.30, 0.95), (0.30, 0.95)),
            ("c", 3, (0.40, 0.97), (0.60, 0.96)), ("d", 4, (0.45, 0.96), (0.90, 0.99))]
    return [PresetEntry.from_dict({
        "name": n, "resolution": 16, "keep_rate": 1.0, "flops": f, "gflops": f / 1e9, "params": 1, "onnx": "x.onnx",
        "export": {}, "torch": {}, "engines": {
            "openvino": {"status": "ok", "top1": ov[1], "latency_ms": {"p50": ov[0], "p90": ov[0] * 1.2}},
            "onnxruntime": {"status": "ok", "top1": ort[1], "latency_ms": {"p50": ort[0], "p90": ort[0] * 1.2}},
            "tensorrt": {"status": "unavailable", "reason": "no GPU"}}}) for n, f, ov, ort in rows]


def _marked(primary: str) -> list[dict]:
    entries = _entries()
    mark_pareto(entries, primary)
    return [e.to_dict() for e in entries]


def test_pareto_front_drops_dominated_points_only():
    assert pareto_front({"a": (1, 0.9), "b": (2, 0.95), "c": (3, 0.94), "d": (2, 0.95)}) == {"a", "b", "d"}


def test_each_backend_gets_its_own_front_and_the_preset_flag_follows_the_primary():
    entries = _marked("openvino")
    ov = {e["name"] for e in entries if e["engines"]["openvino"]["pareto"]}
    ort = {e["name"] for e in entries if e["engines"]["onnxruntime"]["pareto"]}
    assert ov == {"a", "b", "c"}   # d: slower and less accurate than c on OpenVINO
    assert ort == {"b", "c", "d"}  # a: slower and less accurate than b on ONNX Runtime
    assert [e["pareto"] for e in entries] == [e["engines"]["openvino"]["pareto"] for e in entries]
    assert "pareto" not in entries[0]["engines"]["tensorrt"]


def _runtime(entries, backend):
    infos = [PresetInfo(e["name"], 16, 1.0, e["flops"] / 1e3, "int8", e["engines"][backend]["top1"],
                        e["engines"][backend]["latency_ms"]["p50"], e["engines"][backend]["pareto"],
                        e["engines"][backend]["latency_ms"]["p90"]) for e in entries]
    rt = Runtime.__new__(Runtime)
    rt.presets = infos
    return rt


def test_candidates_climb_in_accuracy_as_latency_grows_on_every_backend():
    entries = _marked("openvino")
    for backend in ("openvino", "onnxruntime"):
        ladder = _runtime(entries, backend).candidates
        lat = [p.latency_ms for p in ladder]
        acc = [p.top1 for p in ladder]
        assert lat == sorted(lat) and acc == sorted(acc) and len(set(acc)) == len(acc), (backend, ladder)
        assert ladder[0].latency_p90_ms > ladder[0].latency_ms   # the latency policy's seed is the p90


class _Sleeper:
    """A runner whose latency is known: the interleaved measurement must rank engines by it."""

    def __init__(self, ms):
        self.ms, self.input_shape, self.calls = ms, (1, 3, 4, 4), 0

    def infer(self, x):
        self.calls += 1
        time.sleep(self.ms / 1e3)


def test_interleaved_latency_ranks_engines_by_their_cost():
    runners = {"slow": _Sleeper(4.0), "fast": _Sleeper(0.5), "mid": _Sleeper(2.0)}
    lat = measure_latencies_interleaved(runners, np.zeros((8, 3, 4, 4), np.float32), rounds=3, budget_s=0.02,
                                        pause_s=0.0)
    assert lat["fast"]["p50"] < lat["mid"]["p50"] < lat["slow"]["p50"]
    assert lat["slow"]["p50"] >= 4.0 and all(v["interleaved"] and v["iters"] >= 15 for v in lat.values())
    assert all(v["p50"] <= v["p90"] <= v["p99"] for v in lat.values())


def test_predict_on_no_images_returns_an_empty_prediction(built):
    import edgevit

    with edgevit.load(built[0]) as rt:
        pred = rt.predict([])
    assert pred.indices.shape == (0,) and pred.labels == [] and pred.logits.shape == (0, len(rt.labels))


def test_a_family_alias_matches_the_checkpoint_it_names(quick_checkpoint):
    from edgevit.build.checkpoints import load_checkpoint

    assert load_checkpoint(quick_checkpoint, "supervit").model.variant == "supervit-nano"
