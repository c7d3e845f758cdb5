#!/usr/bin/env python
"""How long a preset switch takes, and what keeping every preset resident costs in memory.

    python tools/bench_switch.py bundles/supervit-nano-x86-cpu [--switches 1000] [--clients 2]

For each switch the deciding thread calls ``Runtime.use(new)`` and at once issues a request, as a device loop
does after a switch. Reported:
  * use():           the swap itself;
  * decision -> first result from the new preset: without pre-warm (the swap, then that request on a preset
    last run many requests ago), and with pre-warm (what ``Switcher`` does by default: one throw-away inference
    on the target, on the switcher's thread, before the swap; it is counted, and the swap -> first result part
    is shown on its own), beside requests without switching;
both on an otherwise idle process and with ``--clients`` threads predicting back to back (requests already
running finish on the old preset, by design). Memory: resident set size of a fresh process after loading one
preset, and after loading all of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import numpy as np

_MEMORY_PROBE = """
import json, sys, numpy as np, psutil, edgevit
rss0 = psutil.Process().memory_info().rss
presets = json.loads(sys.argv[2])
rt = edgevit.load(sys.argv[1], presets=presets)
x = np.zeros(tuple(rt.manifest.input["shape"]), np.float32)
for p in rt.presets:
    rt.predict(x, preset=p.name, preprocessed=True)
print(json.dumps({"presets": len(rt.presets), "rss_mb": psutil.Process().memory_info().rss / 2**20,
                  "base_mb": rss0 / 2**20}))
"""


def memory(bundle: str, presets: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, bundle, json.dumps(presets)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    import edgevit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--switches", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--gap-ms", type=float, default=0.0, help="idle time between the deciding thread's requests")
    args = ap.parse_args()

    rt = edgevit.load(args.bundle, backend=args.backend)
    names = [p.name for p in rt.presets]
    x = np.zeros(tuple(rt.manifest.input["shape"]), np.float32)
    rng = np.random.default_rng(0)
    for n in names:                      # warm every preset in this thread, as a running device loop would be
        for _ in range(20):
            rt.predict(x, preset=n, preprocessed=True)

    def run(switch: bool, count: int, warm: bool = False) -> tuple[list[float], list[float], list[float]]:
        uses, served, decided = [], [], []
        for _ in range(count):
            target = names[(names.index(rt.current) + 1 + int(rng.integers(len(names) - 1))) % len(names)]
            td = time.perf_counter()             # the decision
            if warm:
                rt.warm(target)                  # what Switcher does before the swap, off the request path
            t0 = time.perf_counter()
            if switch:
                rt.use(target)
            t1 = time.perf_counter()
            pred = rt.predict(x, preset=None if switch else target, preprocessed=True)
            t2 = time.perf_counter()
            assert pred.preset == target
            uses.append((t1 - t0) * 1e3)
            served.append((t2 - t0) * 1e3)
            decided.append((t2 - td) * 1e3)
            if args.gap_ms:
                time.sleep(args.gap_ms / 1e3)   # idle time between requests: thread pools park, wake-up shows
        return uses, served, decided

    def pct(a):
        a = np.asarray(a)
        return f"p50 {np.percentile(a, 50):.3f}  p90 {np.percentile(a, 90):.3f}  p99 {np.percentile(a, 99):.3f} ms"

    print(f"bundle {args.bundle}: {len(names)} presets resident ({rt.backend}), {args.switches} switches per row")
    for clients in (0, args.clients):
        stop = threading.Event()

        def client(stop=stop):
            while not stop.is_set():
                rt.predict(x, preprocessed=True)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        uses, served, _ = run(True, args.switches)
        _, warmed, warmed_total = run(True, args.switches, warm=True)
        _, steady, _ = run(False, args.switches)
        same = []
        for _ in range(args.switches):
            t0 = time.perf_counter()
            rt.predict(x, preprocessed=True)
            same.append((time.perf_counter() - t0) * 1e3)
        stop.set()
        for t in threads:
            t.join()
        label = "idle" if clients == 0 else f"{clients} client threads busy"
        print(f"[{label}] use(): p99 {np.percentile(uses, 99) * 1e3:.1f} us")
        print(f"[{label}] decision -> first result, no pre-warm:   {pct(served)}   (Switcher(warm=False))")
        print(f"[{label}] decision -> first result, pre-warmed:    {pct(warmed_total)}   (Switcher default: "
              f"one throw-away inference first, while requests still run on the old preset)")
        print(f"[{label}]   of which swap -> first result:       {pct(warmed)}")
        if clients == 0:
            p99 = float(np.percentile(served, 99))
            print(f"[{label}] p99 decision -> first result without pre-warm: {p99:.3f} ms "
                  f"({'under' if p99 < 1.0 else 'OVER'} the 1 ms target)")
        print(f"[{label}] requests alternating presets, no switch: {pct(steady)}")
        print(f"[{label}] requests on one preset, no switch:       {pct(same)}")
    rt.close()

    one = memory(args.bundle, [names[-1]])
    everything = memory(args.bundle, names)
    print(f"memory (RSS, fresh process): one preset {one['rss_mb']:.1f} MB, all {everything['presets']} presets "
          f"{everything['rss_mb']:.1f} MB (+{everything['rss_mb'] - one['rss_mb']:.1f} MB; interpreter and "
          f"libraries alone {one['base_mb']:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
