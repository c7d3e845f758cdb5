"""Human-readable views of a bundle manifest: report.md and ``edgevit inspect``."""

from __future__ import annotations

from edgevit.manifest import PENDING


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ms(e) -> str:
    lat = e.get("latency_ms") if isinstance(e, dict) else None
    return f"{lat['p50']:.3f}" if lat else "n/a"


def _agree(e: dict) -> str:
    """Agreement with its one-sided confidence bounds and sample size, as the gate judged it."""
    g = e.get("gate")
    if not g:
        return _pct(e.get("agreement"))
    lo, hi = g["agreement_interval"]
    return f"{_pct(e['agreement'])} [{100 * lo:.1f}, {100 * hi:.1f}] n={g['samples']}"


def precision_mix(m: dict) -> str:
    """The real mix of shipped engines, e.g. ``openvino: 5 int8, 7 fp32; onnxruntime: 12 int8``."""
    parts = []
    for b in m["backends"]:
        counts: dict = {}
        for p in m["presets"]:
            e = p["engines"].get(b, {})
            if e.get("precision"):
                counts[e["precision"]] = counts.get(e["precision"], 0) + 1
        if counts:
            parts.append(f"{b}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return "; ".join(parts)


def _precision_pref(m: dict) -> str:
    prec = m["precision"]
    return " > ".join(prec) if isinstance(prec, list) else str(prec)


def preset_rows(manifest: dict) -> list[list[str]]:
    backends = manifest["backends"]
    rows = []
    for p in manifest["presets"]:
        row = [p["name"] + (" *" if p.get("pareto") else ""), str(p["resolution"]), f"{p['keep_rate']:g}",
               f"{p['gflops']:.4f}", _pct(p["torch"]["top1"])]
        for b in backends:
            e = p["engines"].get(b, {})
            if e.get("status") == PENDING:   # figures of the ONNX it is built from, on ORT CPU
                row += [f"{e['precision']} (pending, ORT CPU)", _pct(e["top1"]), _pct(e["agreement"]), "n/a", "n/a"]
                continue
            if e.get("status") != "ok":
                row += [e.get("status", "missing"), "", "", "", ""]
                continue
            prec = e.get("chosen", {}).get("id", e["precision"])
            if (p.get("default") or {}).get("backend") == b and len(backends) > 1:
                prec += " (default)"
            row += [prec, _pct(e["top1"]), _agree(e), _ms(e), _mb(e)]
        rows.append(row)
    return rows


def _mb(e: dict) -> str:
    """What the engine adds resident (fresh process, every preset loaded), or n/a where not measured."""
    r = e.get("resident_mb")
    return f"{r['added']:.1f}" if r else "n/a"


def preset_header(manifest: dict) -> list[str]:
    head = ["preset", "res", "keep", "GFLOPs", "torch top-1"]
    for b in manifest["backends"]:
        head += [f"{b} precision", f"{b} top-1", f"{b} agree", f"{b} p50 ms", f"{b} MB"]
    return head


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def summary_lines(m: dict) -> list[str]:
    t, tools = m["target"], m["tools"]
    lines = [
        f"model      {m['model']['name']} ({m['model']['params']:,} params; {m['model']['source']})",
        f"target     {t['name']}: {t['description']}",
        f"backends   {', '.join(m['backends'])} (primary {m['backend']}); precision preference {_precision_pref(m)}; "
        f"opset {m['opset']}",
        f"engines    {precision_mix(m)}" + ("; default backend per preset: "
                                            + ", ".join(f"{n} {b}" for b, n in m['engine_mix']['defaults'].items())
                                            if m.get("engine_mix", {}).get("defaults") else ""),
        f"input      {m['input']['name']} {m['input']['shape']} {m['input']['dtype']}; labels {len(m['labels'])}",
        f"data       {m['data']['name']} (split {m['data']['split_hash']}); calibration {m['data']['calibration_samples']}, "
        f"validation {m['data']['validation_samples']}",
        f"gate       top-1 drop <= {100 * t['accuracy']['max_top1_drop']:.2f} pts, agreement >= "
        f"{100 * t['accuracy']['min_agreement']:.2f}%, failing only where the data show it at "
        f"{t['accuracy'].get('confidence', 0.95):.0%} one-sided (Wilson / paired McNemar bounds)",
        "tools      " + ", ".join(f"{k} {v}" for k, v in tools.items() if v),
        f"built      {m['created']} by edgevit {m['edgevit_version']} in {m['build_seconds']} s"
        + (f" ({m['obtain_seconds']} s of it obtaining the model)" if m.get("obtain_seconds") else ""),
    ]
    if m.get("unavailable_backends"):
        for b, why in m["unavailable_backends"].items():
            lines.append(f"missing    {b}: {why}")
    if not m.get("latency_measured_here"):
        lines.append(f"latency    not measured: {m.get('latency_note')}")
    lines += memory_lines(m)
    dev = m.get("device_build")
    if dev and dev["status"] == "pending":
        lines.append(f"TensorRT   {len(dev['pending_presets'])} engine(s) pending-device-build ({dev['reason']}): run "
                     f"`edgevit engine build <bundle>` on the device; {dev['kit']}")
    elif dev:
        on = dev.get("built_on") or {}
        lines.append(f"TensorRT   engines built on {on.get('gpu')} (compute capability {on.get('compute_capability')}, "
                     f"TensorRT {on.get('tensorrt')}" + (f", L4T {on['l4t']}" if on.get("l4t") else "") + ")"
                     + (f"; failed validation: {', '.join(dev['failed'])}" if dev.get("failed") else ""))
    return lines


def memory_lines(m: dict) -> list[str]:
    """Resident memory with every preset loaded, per backend, and the shared engines' check against the
    presets' own engines."""
    mem = m.get("memory")
    if not mem:
        return []
    lines = ["memory     every preset resident: " + "; ".join(
        f"{b} {v['all_presets_mb']:.1f} MB for {v['presets']}{' (shared weights)' if v['shared_weights'] else ''}"
        for b, v in mem["backends"].items()) + " (fresh process)"]
    bud = mem.get("budget")
    if bud:
        held = (f"{bud['default_set_mb']:.1f} MB" if bud["default_set_mb"] is not None
                else f"about {bud['estimate_mb']:.1f} MB")
        lines.append(f"budget     {bud['mb']:g} MB for resident presets: the default engines hold {held}, "
                     + ("fits" if bud["fits"] else "over the budget (no set built here fits)")
                     + ("; moved " + ", ".join(f"{p} {m}" for p, m in bud["moved"].items()) if bud["moved"] else ""))
    for b, c in (mem.get("shared_check") or {}).items():
        verdict = "kept" if c["passed"] else "not the default"
        lines.append(f"shared     {b} {c.get('shared_engine', '')}: {c['shared_mb']:.1f} MB for {c['presets']} presets "
                     f"against {c['presets']} x {c['per_preset_mb']:.1f} MB of one preset's own engine "
                     f"({c.get('per_preset_engine', '')}): {verdict}")
    return lines


def choices(m: dict, detail: bool = True) -> list[str]:
    """One line per preset and backend: what shipped, why, and every candidate with its figures."""
    out = []
    for p in m["presets"]:
        for b, e in p["engines"].items():
            if "chosen" not in e:
                continue
            cands = []
            for c in e.get("candidates", []):
                if c.get("skipped"):
                    cands.append(f"{c['id']} skipped ({c['reason']})")
                    continue
                lat = f", p50 {c['latency_ms']['p50']:.3f} ms" if c.get("latency_ms") else ", not measured"
                g = c.get("gate") or {}
                lo = g.get("agreement_interval", [None])[0]
                bound = f" (>= {100 * lo:.1f}%)" if lo is not None else ""
                verdict = "passed" if c["passed"] else f"failed: {c['reason']}"
                cands.append(f"{c['id']} [{c['recipe']}] agree {_pct(c.get('agreement'))}{bound}{lat}, {verdict}")
            default = " (default)" if (p.get("default") or {}).get("backend") == b else ""
            line = f"{p['name']} on {b}{default}: {e['chosen']['id']}, {e['chosen']['why']}"
            out.append(f"{line}. Candidates: " + "; ".join(cands) if detail else line)
    return out


def manifest_report(m: dict) -> str:
    parts = [f"# {m['name']}", "", "```", *summary_lines(m), "```", "",
             "## Presets", "", "`*` marks the accuracy/latency Pareto front of the default engines. Agreement is "
             "the fraction of validation images where the engine's top-1 equals the torch FP32 model's, with its "
             "one-sided confidence bounds and sample size.", "",
             markdown_table(preset_header(m), preset_rows(m)), ""]
    ch = choices(m)
    parts += ["## Choices", ""] + [f"- {x}" for x in ch] + [""]
    return "\n".join(parts)
