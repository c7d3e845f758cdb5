"""Validation of an engine against the torch FP32 model, the accuracy gate, and the Pareto front.

Numpy only: the same code checks engines at build time and on the device.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from edgevit.backends.base import run_engine


@dataclass
class Validation:
    top1: float
    agreement: float            # fraction of images where the engine's top-1 equals torch FP32's
    mean_abs_dlogit: float
    max_abs_dlogit: float
    samples: int
    predictions_sha256: str     # of the int32 predicted class indices, in split order
    kappa: float = 0.0          # Cohen's kappa of the predictions against the labels (mapping's usual figure)
    # The paired outcome against torch FP32: [torch right and engine wrong, torch wrong and engine right].
    discordant: list = field(default_factory=lambda: [0, 0])

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def cohen_kappa(pred: np.ndarray, labels: np.ndarray) -> float:
    """(p_o - p_e) / (1 - p_e): agreement with the labels beyond what the class frequencies give by chance."""
    pred, labels = np.asarray(pred).ravel(), np.asarray(labels).ravel()
    if len(labels) == 0:
        return 0.0
    k = int(max(pred.max(initial=0), labels.max(initial=0))) + 1
    p_o = float((pred == labels).mean())
    p_e = float((np.bincount(pred, minlength=k) * np.bincount(labels, minlength=k)).sum()) / len(labels) ** 2
    return 1.0 if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def predictions_digest(pred: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(pred, dtype=np.int32).tobytes()).hexdigest()


def validate(runner, x: np.ndarray, y: np.ndarray, reference_logits: np.ndarray) -> Validation:
    logits = run_engine(runner, x)
    pred, ref = logits.argmax(-1), reference_logits.argmax(-1)
    d = np.abs(logits - reference_logits)
    right, ref_right = pred == y, ref == y
    discordant = [int((ref_right & ~right).sum()), int((~ref_right & right).sum())]
    return Validation(float(right.mean()), float((pred == ref).mean()), float(d.mean()), float(d.max()),
                      int(len(y)), predictions_digest(pred), cohen_kappa(pred, y), discordant)


# -- the gate ----------------------------------------------------------------------------------------------

DEFAULT_CONFIDENCE = 0.95


def wilson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion, each at ``confidence``.

    Wilson rather than the normal approximation: it stays inside [0, 1] and behaves at 0 or n successes,
    which is where agreement figures live."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class GateResult:
    """The gate's verdict with the statistics it rests on (what the manifest, inspect and report.md show)."""

    passed: bool
    reason: str
    samples: int
    agreement: float
    agreement_interval: tuple      # one-sided bounds at ``confidence``: (lower, upper)
    top1_drop: float
    top1_drop_interval: tuple
    confidence: float

    def to_dict(self) -> dict:
        r = lambda v: round(float(v), 6)  # noqa: E731
        return {"passed": self.passed, "reason": self.reason, "samples": self.samples, "confidence": self.confidence,
                "agreement": r(self.agreement), "agreement_interval": [r(x) for x in self.agreement_interval],
                "top1_drop": r(self.top1_drop), "top1_drop_interval": [r(x) for x in self.top1_drop_interval]}


def top1_drop_interval(discordant, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Bounds of the paired top-1 drop (torch FP32 minus engine), McNemar's way: only the m discordant images
    carry information; given m, the share q of them that the engine got wrong has Wilson bounds, and the drop
    is (m / n)(2q - 1)."""
    b, c = (int(x) for x in discordant)
    m = b + c
    if m == 0 or n <= 0:
        return 0.0, 0.0
    lo, hi = wilson_interval(b, m, confidence)
    return m / n * (2 * lo - 1), m / n * (2 * hi - 1)


def gate(v: Validation, reference_top1: float, accuracy: dict) -> GateResult:
    """The profile's accuracy gate, judged on the paired validation results with their sample size.

    An engine fails only where the data show a real loss at ``accuracy.confidence`` (one-sided): its
    agreement with torch FP32 is below ``min_agreement`` even at the upper Wilson bound, or its top-1 drop is
    above ``max_top1_drop`` even at the lower bound of the paired (McNemar) interval. So one image in 360 is
    not read as a loss, and ten are."""
    conf = float(accuracy.get("confidence", DEFAULT_CONFIDENCE))
    n = int(v.samples)
    agree_k = int(round(v.agreement * n))
    a_lo, a_hi = wilson_interval(agree_k, n, conf)
    b, c = (int(x) for x in v.discordant)
    drop = (b - c) / n if n else reference_top1 - v.top1
    d_lo, d_hi = top1_drop_interval(v.discordant, n, conf)
    problems = []
    if d_lo > accuracy["max_top1_drop"] + 1e-12:
        problems.append(f"top-1 drop {100 * drop:.2f} pts (>= {100 * d_lo:.2f} at {conf:.0%}) > "
                        f"{100 * accuracy['max_top1_drop']:.2f}")
    if a_hi < accuracy["min_agreement"] - 1e-12:
        problems.append(f"agreement {100 * v.agreement:.2f}% (<= {100 * a_hi:.2f}% at {conf:.0%}, n={n}) < "
                        f"{100 * accuracy['min_agreement']:.2f}%")
    return GateResult(not problems, "; ".join(problems), n, v.agreement, (a_lo, a_hi), drop, (d_lo, d_hi), conf)


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (cost, accuracy) no other point beats: cost no higher and accuracy no lower, one strictly."""
    front = set()
    for name, (c, a) in points.items():
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for n2, (c2, a2) in points.items() if n2 != name)
        if not dominated:
            front.add(name)
    return front


def _front(engines_by_preset: dict) -> set[str]:
    """``engines_by_preset``: preset name -> (PresetEntry, its EngineEntry on one backend, or None)."""
    points = {}
    for name, (e, eng) in engines_by_preset.items():
        if eng is None or eng.top1 is None:
            continue
        cost = eng.latency("p50") if eng.latency_ms else e.flops
        points[name] = (cost, eng.top1)
    return pareto_front(points)


def mark_pareto(entries: list, primary: str) -> None:
    """The accuracy/latency Pareto flags (``entries``: ``manifest.PresetEntry``): per backend on each engine
    (what a runtime pinned to that backend may switch between), and on the preset for the engines
    ``edgevit.load`` runs by default (each preset's ``default`` backend, else the primary). Cost is the
    measured p50, or FLOPs where not measured."""
    names = {n for e in entries for n in e.engines}
    for name in names:
        front = _front({e.name: (e, e.engines.get(name)) for e in entries})
        for e in entries:
            eng = e.engines.get(name)
            if eng is not None and eng.top1 is not None:
                eng.pareto = e.name in front
    front = _front({e.name: (e, e.engines.get(e.default_backend() or primary)) for e in entries})
    for e in entries:
        e.pareto = e.name in front
