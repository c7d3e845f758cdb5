"""Validation of an engine against the torch FP32 model, the accuracy gate, and the Pareto front.

Numpy only: the same code checks engines at build time and on the device.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Validation:
    top1: float
    agreement: float            # fraction of images where the engine's top-1 equals torch FP32's
    mean_abs_dlogit: float
    max_abs_dlogit: float
    samples: int
    predictions_sha256: str     # of the int32 predicted class indices, in split order
    kappa: float = 0.0          # Cohen's kappa of the predictions against the labels (mapping's usual figure)

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


def run_engine(runner, x: np.ndarray) -> np.ndarray:
    """Logits for every row of ``x`` with a static-batch runner (the last chunk is padded)."""
    b = runner.input_shape[0]
    outs = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
        outs.append(runner.infer(np.ascontiguousarray(chunk))[:n])
    return np.concatenate(outs)


def validate(runner, x: np.ndarray, y: np.ndarray, reference_logits: np.ndarray) -> Validation:
    logits = run_engine(runner, x)
    pred, ref = logits.argmax(-1), reference_logits.argmax(-1)
    d = np.abs(logits - reference_logits)
    return Validation(float((pred == y).mean()), float((pred == ref).mean()), float(d.mean()), float(d.max()),
                      int(len(y)), predictions_digest(pred), cohen_kappa(pred, y))


def gate(v: Validation, reference_top1: float, accuracy: dict) -> tuple[bool, str]:
    """The profile's accuracy gate: top-1 drop against torch FP32 and top-1 agreement with it."""
    drop = reference_top1 - v.top1
    problems = []
    if drop > accuracy["max_top1_drop"] + 1e-12:
        problems.append(f"top-1 drop {100 * drop:.2f} pts > {100 * accuracy['max_top1_drop']:.2f}")
    if v.agreement < accuracy["min_agreement"] - 1e-12:
        problems.append(f"agreement {100 * v.agreement:.2f}% < {100 * accuracy['min_agreement']:.2f}%")
    return (not problems), "; ".join(problems)


def measure_latency(runner, sample: np.ndarray, warmup: int = 10, iters: int = 50) -> dict:
    """Median and tail latency of one static-shape inference, in milliseconds."""
    x = np.ascontiguousarray(sample[: runner.input_shape[0]])
    for _ in range(warmup):
        runner.infer(x)
    t = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        runner.infer(x)
        t[i] = time.perf_counter() - t0
    t *= 1e3
    return {"p50": round(float(np.median(t)), 4), "p90": round(float(np.percentile(t, 90)), 4),
            "p99": round(float(np.percentile(t, 99)), 4), "iters": iters}


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (cost, accuracy) no other point beats: cost no higher and accuracy no lower, one strictly."""
    front = set()
    for name, (c, a) in points.items():
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for n2, (c2, a2) in points.items() if n2 != name)
        if not dominated:
            front.add(name)
    return front
