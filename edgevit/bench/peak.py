"""This host's measured peak: one large matrix multiply, FP32 (numpy/BLAS) and INT8 (ONNX Runtime).

The bench reports achieved GFLOP/s of each engine as a fraction of these, which tells whether a preset is
compute-bound or starved by memory, threads or overheads.
"""

from __future__ import annotations

import time

import numpy as np


def _best_rate(fn, flops: float, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def fp32_peak(n: int = 1024, reps: int = 5, threads: int = 0) -> float:
    """GFLOP/s (1 multiply-add = 1 FLOP, the convention of the model FLOP counts) of an n x n x n matmul,
    on ``threads`` threads (0: the library's default) like the engines it is compared with: torch's BLAS,
    whose thread count can be set, else numpy's."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    try:
        import torch
    except ImportError:
        return _best_rate(lambda: a @ b, float(n) ** 3, reps)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _best_rate(lambda: torch.mm(ta, tb), float(n) ** 3, reps)
    finally:
        torch.set_num_threads(before)


def int8_peak(n: int = 1024, reps: int = 5, threads: int = 0) -> float | None:
    """Same for uint8 x int8 -> int32 (MatMulInteger, VNNI where the CPU has it); None without onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every supported onnxruntime reads
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    del onnx
    return _best_rate(lambda: sess.run(None, feeds), float(n) ** 3, reps)


# Multiply-adds per cycle per core of the widest kernels each ISA has, assuming two vector multiply-add ports
# (Intel server cores, AMD Zen 5; one-port parts reach half): INT8 (VNNI vpdpbusd: 64 per 512-bit
# instruction; AMX TDPBUSD: 1024 a cycle), BF16 (vdpbf16ps: 32; AMX: 512) and FP32 FMA (16 per 512-bit).
_MACS_PER_CYCLE = (
    ("amx_int8", "int8", 1024), ("avx512_vnni", "int8", 128), ("avx2", "int8", 32),
    ("amx_bf16", "bf16", 512), ("avx512_bf16", "bf16", 64),
    ("avx512f", "fp32", 32), ("avx2", "fp32", 16),
)
_AVX512 = {"avx512_vnni", "avx512_bf16", "avx512f"}


def avx512_per_cycle(vendor: str | None, family: int | None) -> int:
    """512-bit multiply-add instructions a core starts per cycle: AMD Zen 4 (family 25, the first AMD with
    AVX-512) splits each into two 256-bit halves on its two FMA pipes, so one; Zen 5 (family 26) and Intel's
    server cores two (some Intel parts have one port, which cpuinfo does not tell)."""
    return 1 if vendor == "AuthenticAMD" and family == 25 else 2


def _cpuinfo(text: str | None = None) -> dict[str, str]:
    """The first processor's ``key: value`` fields of /proc/cpuinfo, or of ``text`` in its format."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_vendor_family(text: str | None = None) -> tuple[str | None, int | None]:
    """(vendor_id, cpu family) of /proc/cpuinfo, or of ``text`` in its format; None where it says none."""
    info = _cpuinfo(text)
    family = info.get("cpu family", "")
    return info.get("vendor_id"), int(family) if family.isdigit() else None


def cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports (nominal on a VM; turbo not counted), or None where it says none."""
    try:
        return float(_cpuinfo()["cpu MHz"])
    except (KeyError, ValueError):
        return None


def theoretical_peak(features, cores: int, mhz: float | None, avx512_ports: int = 2) -> dict[str, float | None]:
    """GMAC/s per precision (1 multiply-add = 1 op, as the model FLOP counts): cores x clock x multiply-adds
    per cycle of the best kernel the listed ``features`` allow, with ``avx512_ports`` 512-bit instructions a
    cycle (``avx512_per_cycle``); None where the clock is unknown."""
    have = set(features)
    peak: dict[str, float | None] = {}
    for flag, precision, per_cycle in _MACS_PER_CYCLE:
        if flag in _AVX512:
            per_cycle = per_cycle * avx512_ports // 2
        if flag in have and precision not in peak:
            peak[precision] = None if mhz is None else cores * mhz * 1e6 * per_cycle / 1e9
    return peak
