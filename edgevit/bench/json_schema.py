"""JSON schema of ``edgevit bench --json`` output (schema_version 1)."""

_NUM = {"type": ["number", "null"]}
_LAT = {"type": "object", "required": ["p50", "p90", "p99", "max", "mean", "n", "repeats", "spread"],
        "properties": {k: {"type": "number"} for k in ("p50", "p90", "p99", "max", "mean", "spread")}}

RESULT = {
    "type": "object",
    "required": ["preset", "backend", "precision", "latency_ms", "throughput_ips", "speedup_vs_torch", "top1",
                 "top1_source", "achieved_gflops", "fraction_of_peak", "engine_mb", "rss_delta_mb", "energy_mj",
                 "gflops", "engine_batch", "power_mode", "warning"],
    "properties": {
        "preset": {"type": "string"}, "backend": {"type": "string"},
        "precision": {"enum": ["int8", "bf16", "fp16", "fp32"]},
        "latency_ms": _LAT,
        "throughput_ips": {"type": "object", "additionalProperties": _NUM},
        "speedup_vs_torch": _NUM, "top1": _NUM, "top1_source": {"enum": ["manifest", "measured"]},
        "achieved_gflops": _NUM, "fraction_of_peak": _NUM, "engine_mb": _NUM, "rss_delta_mb": _NUM,
        "energy_mj": _NUM, "gflops": {"type": "number"}, "engine_batch": {"type": "integer", "minimum": 1},
        "power_mode": {"type": ["string", "null"]}, "warning": {"type": ["string", "null"]},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgevit bench result",
    "type": "object",
    "required": ["schema", "schema_version", "edgevit_version", "created", "bundle", "host", "settings", "peak",
                 "energy", "baseline", "skipped", "results"],
    "properties": {
        "schema": {"const": "edgevit-bench"},
        "schema_version": {"const": 1},
        "bundle": {"type": "object", "required": ["path", "name", "model", "target"]},
        "host": {"type": "object", "required": ["cpu", "arch", "features", "cores", "threads", "tools",
                                                "openvino_inference_precision", "jetson_power_mode"]},
        "settings": {"type": "object", "required": ["batches", "warmup_s", "duration_s", "iterations", "repeats"]},
        "peak": {"type": "object", "required": ["fp32_gflops", "int8_gflops"]},
        "energy": {"type": "object", "required": ["sensor", "note"]},
        "results": {"type": "array", "minItems": 1, "items": RESULT},
    },
}
