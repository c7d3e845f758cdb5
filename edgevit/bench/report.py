"""Bench outputs: terminal table, Markdown, JSON (schema in ``schema.py``) and the accuracy/latency plot."""

from __future__ import annotations

import json
from pathlib import Path

from edgevit.manifest_report import markdown_table, text_table
from edgevit.build.validate import pareto_front

HEAD = ["preset", "backend", "prec", "p50 ms", "p90 ms", "p99 ms", "max ms", "img/s", "vs torch", "GFLOP/s",
        "% peak", "engine MB", "resident MB", "top-1", "mJ/inf", "spread"]


def _f(v, fmt="{:.3f}", none="n/a"):
    return none if v is None else fmt.format(v)


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    batches = [str(b) for b in result["settings"]["batches"]]
    head = HEAD[:7] + [f"img/s@{b}" for b in batches] + HEAD[8:]
    if any(r.get("power_mode") for r in result["results"]):
        head = ["mode"] + head
    out = []
    for r in result["results"]:
        lat = r["latency_ms"]
        row = [r["preset"], r["backend"], r["precision"], _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]),
               _f(lat["max"])]
        row += [_f(r["throughput_ips"].get(b), "{:.1f}") for b in batches]
        row += [_f(r.get("speedup_vs_torch"), "{:.2f}x", "-"), _f(r.get("achieved_gflops"), "{:.2f}"),
                _f(None if r.get("fraction_of_peak") is None else 100 * r["fraction_of_peak"], "{:.1f}"),
                _f(r.get("engine_mb"), "{:.2f}"), _f(r.get("rss_delta_mb"), "{:.1f}"),
                _f(None if r.get("top1") is None else 100 * r["top1"], "{:.2f}%"),
                _f(r.get("energy_mj"), "{:.3f}"),
                f"{100 * lat['spread']:.0f}%" + (" !" if r.get("warning") else "")]
        if r.get("power_mode"):
            row = [r["power_mode"]] + row
        out.append(row)
    return head, out


def host_lines(result: dict) -> list[str]:
    h = result["host"]
    tools = ", ".join(f"{k} {v}" for k, v in h["tools"].items() if v and k != "edgevit")
    lines = [f"host: {h['cpu']} ({h['arch']}; {', '.join(h['features']) or 'no SIMD flags read'}); "
             f"{h['threads']} of {h['cores']} cores; {tools}",
             f"OpenVINO inference precision: {', '.join(h['openvino_inference_precision']) or 'n/a'}; "
             f"Jetson power mode: {h['jetson_power_mode'] or 'n/a'}",
             f"peak (1024^3 matmul): FP32 {result['peak']['fp32_gflops']} GFLOP/s, INT8 "
             f"{result['peak']['int8_gflops'] or 'n/a'} GOP/s (1 multiply-add = 1 op)",
             f"energy: {result['energy']['sensor'] or 'n/a: ' + (result['energy']['note'] or '')}",
             f"baseline: {result['baseline']}",
             "resident memory with all presets loaded: " + (", ".join(
                 f"{b} {r['mb']:.0f} MB for {r['presets']} presets" + (" (shared weights)" if r["shared_weights"] else "")
                 for b, r in result.get("resident_mb", {}).items()) or "n/a"),
             f"settings: warm-up {result['settings']['warmup_s']} s, "
             + (f"{result['settings']['duration_s']} s" if result['settings']['duration_s'] is not None
                else f"{result['settings']['iterations']} iterations")
             + f" per engine over {result['settings']['repeats']} interleaved repeats; "
             + (f"each request after {result['settings']['interval_ms']:g} ms idle; "
                if result['settings'].get('interval_ms') else "requests back to back; ") + "medians"]
    return lines


def warnings(result: dict) -> list[str]:
    """One line for all engines whose repeats disagree (each engine's text stays in the JSON)."""
    noisy = [r for r in result["results"] if r.get("warning")]
    if not noisy:
        return []
    worst = max(noisy, key=lambda r: r["latency_ms"]["spread"])
    return [f"{len(noisy)} of {len(result['results'])} engines (marked !) have repeat medians more than 10 % apart, "
            f"worst {worst['preset']}/{worst['backend']} at {100 * worst['latency_ms']['spread']:.0f}%: the host "
            f"was busy or throttling; compare ratios within this run, or rerun with a longer --duration"]


def to_text(result: dict) -> str:
    head, body = rows(result)
    out = host_lines(result) + ["", text_table(head, body)]
    out += [f"warning: {w}" for w in warnings(result)]
    if result["skipped"]:
        out += [f"skipped: {k}: {v}" for k, v in result["skipped"].items()]
    return "\n".join(out)


def to_markdown(result: dict) -> str:
    head, body = rows(result)
    b = result["bundle"]
    parts = [f"# edgevit bench: {b['name']}", "", f"{result['created']}, edgevit {result['edgevit_version']}", ""]
    parts += [f"- {line}" for line in host_lines(result)] + ["", markdown_table(head, body), ""]
    w = warnings(result)
    if w:
        parts += ["Warnings:", ""] + [f"- {x}" for x in w] + [""]
    return "\n".join(parts)


def write_json(result: dict, path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def plot(result: dict, path) -> int:
    """Top-1 against p50 latency, one series per backend, the Pareto front drawn; returns points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    drawn = 0
    points = {}
    for backend in dict.fromkeys(r["backend"] for r in result["results"]):
        rs = [r for r in result["results"] if r["backend"] == backend and r.get("top1") is not None]
        if not rs:
            continue
        xs, ys = [r["latency_ms"]["p50"] for r in rs], [100 * r["top1"] for r in rs]
        ax.scatter(xs, ys, label=f"{backend} ({rs[0]['precision']})", s=28, zorder=3)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(r["preset"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5, alpha=0.8)
            points[f"{r['preset']}/{backend}/{r.get('power_mode')}"] = (x, y)
            drawn += 1
    front = sorted((points[k] for k in pareto_front(points)), key=lambda p: p[0])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1, ls="--",
                label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("latency p50, batch 1 (ms, log scale)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{result['bundle']['name']}: accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return drawn
