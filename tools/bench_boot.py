#!/usr/bin/env python
"""Start-up of a device program: `edgevit.load(bundle)` in fresh processes, cold and warm compile cache.

    python tools/bench_boot.py bundles/supervit-nano-x86-cpu --backend openvino --runs 5

Each run is a new Python process that imports edgevit, loads the bundle and predicts once, then waits until
every preset is resident (``edgevit.load`` returns once the starting preset is loaded; the others follow in
a background thread); it reports the time `load` took to return, the first prediction, the time until all
presets were resident, and the resident memory then. The first run starts from an empty compile cache (a private one, so the
user's is untouched), the others find the compiled engines there: what a device sees on its second boot.
`--no-cache` measures loads without the cache for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, psutil, edgevit
t1 = time.perf_counter()
rt = edgevit.load(sys.argv[1], backend=sys.argv[2] or None, cache=sys.argv[3] == "1")
t2 = time.perf_counter()
rt.predict(np.zeros((8, 8), np.uint8))
t3 = time.perf_counter()
rt.wait_loaded()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2,
                  "all_resident_s": t4 - t1, "presets": len(rt.presets),
                  "backends": sorted({p.backend for p in rt.presets}),
                  "rss_mb": psutil.Process().memory_info().rss / 2 ** 20}))
"""


def run(bundle: str, backend: str, cache: bool, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, bundle, backend or "", "1" if cache else "0"],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--backend", default=None, help="pin one backend (default: each preset's default engine)")
    ap.add_argument("--runs", type=int, default=5, help="warm runs after the cold one")
    args = ap.parse_args()
    from edgevit.host import cpu_info

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EDGEVIT_CACHE_DIR": cache}
        no_cache = [run(args.bundle, args.backend, False, env) for _ in range(args.runs)]
        cold = run(args.bundle, args.backend, True, env)
        warm = [run(args.bundle, args.backend, True, env) for _ in range(args.runs)]
    cpu = cpu_info()
    print(f"host: {cpu['model']} ({', '.join(cpu['features'])}), {cpu['cores']} cores")
    print(f"bundle {args.bundle}: {cold['presets']} presets on {', '.join(cold['backends'])}; fresh process per "
          f"run; medians of {args.runs}")
    print("| start | `load` returns s | first predict s | all presets resident s | RSS MB, all resident |")
    print("|---|---|---|---|---|")

    def row(name, rs):
        keys = ("load_s", "first_predict_s", "all_resident_s", "rss_mb")
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        print(f"| {name} | {med['load_s']:.2f} | {med['first_predict_s']:.3f} | {med['all_resident_s']:.2f} "
              f"| {med['rss_mb']:.0f} |")

    row("no compile cache", no_cache)
    row("cold cache (first boot)", [cold])
    row("warm cache (later boots)", warm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
