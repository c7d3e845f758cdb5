"""The choice rule and the gate's statistics, with made-up figures: they hold on any host."""

import numpy as np
import pytest

from edgevit.build.selection import choose_backend, choose_candidate, faster_beyond_noise
from edgevit.build.validate import Validation, gate, top1_drop_interval, wilson_interval

ACC = {"max_top1_drop": 0.01, "min_agreement": 0.99, "confidence": 0.95}


def lat(p50, rounds=None):
    return {"p50": p50, "rounds": rounds if rounds is not None else [p50] * 5}


def cand(cid, precision, passed=True, p50=None, rounds=None, floor=False):
    return {"id": cid, "precision": precision, "recipe": cid, "passed": passed, "floor": floor,
            "latency_ms": None if p50 is None else lat(p50, rounds)}


def test_fastest_passing_candidate_ships():
    cands = [cand("int8", "int8", p50=1.0), cand("int8-dynamic", "int8", p50=0.8), cand("fp32", "fp32", p50=2.0,
                                                                                       floor=True)]
    chosen, why = choose_candidate(cands, measured=True)
    assert chosen["id"] == "int8-dynamic" and "0.40x" in why


def test_a_reduced_precision_slower_than_fp32_does_not_ship():
    cands = [cand("int8", "int8", p50=1.5), cand("fp32", "fp32", p50=1.2, floor=True)]
    chosen, why = choose_candidate(cands, measured=True)
    assert chosen["id"] == "fp32" and "beat fp32" in why


def test_a_failed_candidate_never_ships_however_fast():
    cands = [cand("int8", "int8", passed=False, p50=0.1), cand("fp32", "fp32", p50=1.0, floor=True)]
    chosen, why = choose_candidate(cands, measured=True)
    assert chosen["id"] == "fp32" and "failed the gate: int8" in why


def test_a_tie_within_the_noise_keeps_fp32():
    # 0.5 % faster on the median: inside MIN_GAIN.
    assert choose_candidate([cand("int8", "int8", p50=0.995), cand("fp32", "fp32", p50=1.0, floor=True)],
                            measured=True)[0]["id"] == "fp32"
    # Faster on the median, but only in 3 of 5 interleaved rounds: noise, not a gain.
    noisy = cand("int8", "int8", p50=0.9, rounds=[0.8, 0.8, 0.8, 1.2, 1.2])
    assert choose_candidate([noisy, cand("fp32", "fp32", p50=1.0, floor=True)], measured=True)[0]["id"] == "fp32"
    ok, figures = faster_beyond_noise(noisy["latency_ms"], lat(1.0))
    assert not ok and "3/5 rounds" in figures


def test_unmeasured_builds_follow_the_preference_order():
    cands = [cand("int8", "int8", passed=False), cand("bf16", "bf16"), cand("fp32", "fp32", floor=True)]
    chosen, why = choose_candidate(cands, measured=False)
    assert chosen["id"] == "bf16" and "preference order" in why


def test_backend_switches_only_when_faster_beyond_noise():
    from edgevit.manifest import EngineEntry

    engines = {"openvino": EngineEntry("ok", latency_ms=lat(1.0)), "onnxruntime": EngineEntry("ok", latency_ms=lat(0.7))}
    assert choose_backend(engines, ["openvino", "onnxruntime"], measured=True)[0] == "onnxruntime"
    engines["onnxruntime"].latency_ms = lat(0.999)
    assert choose_backend(engines, ["openvino", "onnxruntime"], measured=True)[0] == "openvino"
    assert choose_backend(engines, ["openvino", "onnxruntime"], measured=False)[0] == "openvino"
    engines["openvino"].status = "pending-device-build"
    assert choose_backend(engines, ["openvino", "onnxruntime"], measured=True)[0] == "onnxruntime"


def _validation(n, disagree, torch_right_engine_wrong=0, engine_right_torch_wrong=0):
    return Validation(top1=0.9, agreement=(n - disagree) / n, mean_abs_dlogit=0.0, max_abs_dlogit=0.0, samples=n,
                      predictions_sha256="", discordant=[torch_right_engine_wrong, engine_right_torch_wrong])


def test_one_image_in_360_is_not_a_loss_ten_are():
    assert gate(_validation(360, 1, 1, 0), 0.9, ACC).passed
    assert gate(_validation(360, 4, 2, 1), 0.9, ACC).passed
    g = gate(_validation(360, 10, 3, 2), 0.9, ACC)
    assert not g.passed and "agreement 97.22%" in g.reason and "n=360" in g.reason
    lo, hi = g.agreement_interval
    assert lo < 0.9722 < hi < 0.99


def test_a_real_top1_drop_is_caught_and_a_balanced_one_is_not():
    # 40 images flipped from right to wrong, none back: a 11-point drop.
    g = gate(_validation(360, 40, 40, 0), 0.9, {**ACC, "min_agreement": 0.0})
    assert not g.passed and "top-1 drop" in g.reason and g.top1_drop == pytest.approx(40 / 360)
    # As many flips each way: no drop, whatever the agreement.
    assert gate(_validation(360, 40, 20, 20), 0.9, {**ACC, "min_agreement": 0.0}).passed


def test_wilson_bounds_behave_at_the_edges():
    lo, hi = wilson_interval(360, 360)
    assert hi == 1.0 and 0.99 < lo < 1.0
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0 < hi < 0.3
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert top1_drop_interval([0, 0], 100) == (0.0, 0.0)
    # More samples, tighter bounds.
    assert np.diff(wilson_interval(990, 1000)) < np.diff(wilson_interval(99, 100))


def test_an_opened_gate_passes_anything():
    g = gate(_validation(100, 100, 90, 0), 0.9, {"max_top1_drop": 1.0, "min_agreement": 0.0})
    assert g.passed and g.confidence == 0.95
