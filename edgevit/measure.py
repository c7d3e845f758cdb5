"""Latency measurement: the one module the build, ``edgevit bench``, the device build and ``tools/`` time with.

Every figure is wall-clock milliseconds of one ``infer`` call. Several engines are timed round-robin
(``interleaved``), never one after another, so that drift on a busy host and the previous runtime's still
spinning thread pool hit them all alike; what ``edgevit.build.selection`` then compares is the per-round medians.
"""

from __future__ import annotations

import threading
import time

import numpy as np

# What timing reads and how it waits; tests put a counted clock here (no test times real sleeps).
clock = time.perf_counter
pause = time.sleep


def timed(fn, x, seconds: float | None = None, iterations: int | None = None,
          interval_s: float = 0.0) -> list[float]:
    """Milliseconds of each call of ``fn(x)``: ``iterations`` calls, or as many as fit in ``seconds``.
    ``interval_s``: idle that long before each call, untimed, as a device serving a request every ``interval_s``
    does (the cores go idle between requests, which costs some engines much more than others)."""
    times = []
    deadline = clock() + (seconds or 0)
    while (iterations is not None and len(times) < iterations) or (iterations is None and clock() < deadline):
        if interval_s:
            pause(interval_s)
        t0 = clock()
        fn(x)
        times.append((clock() - t0) * 1e3)
    return times


def concurrent(fn, x, workers: int, seconds: float) -> tuple[int, float]:
    """Calls completed by ``workers`` threads, each with one request in flight, in about ``seconds``."""
    stop = threading.Event()
    counts = [0] * workers

    def loop(i):
        while not stop.is_set():
            fn(x)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - t0


def interleaved(fns: dict, xs: dict, rounds: int, iters: dict, pause_s: float = 0.03,
                interval_s: float = 0.0) -> tuple[dict, dict]:
    """``rounds`` round-robin rounds; in each, ``fns[k](xs[k])`` is called once untimed (after ``pause_s``,
    so the previous engine's pool goes idle) and ``iters[k]`` times timed, each after ``interval_s`` idle.
    Returns every sample and each round's median, per key, in milliseconds."""
    samples = {k: [] for k in fns}
    per_round = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            pause(pause_s)
            fn(xs[k])
            t = timed(fn, xs[k], iterations=iters[k], interval_s=interval_s)
            samples[k] += t
            per_round[k].append(round(float(np.median(t)), 4))
    return samples, per_round


def percentiles(ms) -> dict:
    t = np.asarray(ms, dtype=np.float64)
    return {"p50": round(float(np.median(t)), 4), "p90": round(float(np.percentile(t, 90)), 4),
            "p99": round(float(np.percentile(t, 99)), 4), "iters": int(len(t))}


def measure_latency(runner, sample: np.ndarray, warmup: int = 10, iters: int = 50, interval_s: float = 0.0) -> dict:
    """Median and tail latency of one static-shape inference of one runner, each after ``interval_s`` idle."""
    x = np.ascontiguousarray(sample[: runner.input_shape[0]])
    timed(runner.infer, x, iterations=warmup)
    pattern = {"interval_ms": round(interval_s * 1e3, 3)} if interval_s else {}
    return {**percentiles(timed(runner.infer, x, iterations=iters, interval_s=interval_s)), **pattern}


def measure_latencies_interleaved(runners: dict, sample: np.ndarray, rounds: int = 5, budget_s: float = 0.15,
                                  max_iters: int = 40, pause_s: float = 0.03,
                                  interval_s: float = 0.0) -> dict[str, dict]:
    """Latency of several runners measured round-robin (``interleaved``), each round about ``budget_s`` per
    runner. A preset's figures are measured once per build and seed the Pareto front the switcher chooses
    from; timed one after another, right after each quantization, they ordered presets by when they were
    built rather than by their cost. Each result keeps every round's median (``rounds``), so two engines can
    be compared round by round: what ``edgevit.build.selection`` calls faster beyond the noise.
    ``interval_s``: the time between requests the device serves (the profile's ``runtime.request_interval_ms``);
    each timed request comes after that much idle, and the figures say so (``interval_ms``)."""
    xs = {name: np.ascontiguousarray(sample[: r.input_shape[0]]) for name, r in runners.items()}
    iters = {}
    for name, r in runners.items():
        timed(r.infer, xs[name], iterations=3)
        one = max(timed(r.infer, xs[name], iterations=1)[0] / 1e3, 1e-5)
        iters[name] = int(min(max_iters, max(5, budget_s / (one + interval_s))))
    samples, per_round = interleaved({k: r.infer for k, r in runners.items()}, xs, rounds, iters, pause_s, interval_s)
    pattern = {"interval_ms": round(interval_s * 1e3, 3)} if interval_s else {}
    return {name: {**percentiles(t), "interleaved": True, **pattern, "rounds": per_round[name]}
            for name, t in samples.items()}


def measure_into_records(loads: dict, sample: np.ndarray, **timing) -> int:
    """``loads``: key -> (a function that loads a runner, the record to write its ``latency_ms`` into). Loads
    them all, times them in one interleaved pass (``timing``: ``measure_latencies_interleaved``'s settings),
    closes them; returns how many were measured."""
    runners = {}
    try:
        for key, (load, _) in loads.items():
            runners[key] = load()
        lat = measure_latencies_interleaved(runners, sample, **timing) if runners else {}
    finally:
        for r in runners.values():
            r.close()
    for key, (_, record) in loads.items():
        record["latency_ms"] = lat[key]
    return len(runners)


def resident_mb() -> float:
    """The process's proportional set size (PSS) where the OS gives it, else its resident set: a file page
    mapped by several sessions (ONNX Runtime's weights file, shared by every preset's graph) counts once in
    PSS and once per mapping in RSS, which would report twelve copies of weights held once."""
    import psutil

    proc = psutil.Process()
    try:
        pss = getattr(proc.memory_full_info(), "pss", None)
    except (psutil.AccessDenied, OSError):
        pss = None
    return (pss if pss is not None else proc.memory_info().rss) / 2 ** 20
