#!/usr/bin/env python3
"""Concurrency benchmark driver: N requests at once through banditd to a fake
upstream that answers after --slow-ms; prints wall time, latency percentiles,
banditd's threads (before/during/after) and memory. Used by bench/concurrency.sh.
With --direct, also measures the same load sent straight to the fake upstream
(the baseline without banditd)."""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import e2elib as L  # noqa: E402


def direct(n, slow_ms):
    L.raise_nofile(max(2 * n + 1024, 4096))
    fake = L.FakeUpstream(record=False)
    model = "slow:%d" % slow_ms
    try:
        reqs = [L.chat_request_bytes(model, "d%05d" % i, fake.port) for i in range(n)]
        results, wall, t_conn = L.load(fake.port, n, lambda i: reqs[i], timeout=120)
        lat = sorted(r[1] for r in results if r and r[0] == 200)
        return {"ok": len(lat), "wall_s": wall, "p50_s": L.percentile(lat, 50),
                "p99_s": L.percentile(lat, 99)}
    finally:
        fake.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--slow-ms", type=int, default=2000)
    ap.add_argument("--stream", action="store_true", help="streaming requests")
    ap.add_argument("--direct", action="store_true", help="also run the baseline without banditd")
    ap.add_argument("--no-barrier", action="store_true",
                    help="skip the second wave (upstream answers once all N are in flight)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    a = ap.parse_args()
    print("banditd concurrency bench: %d requests, upstream %d ms, %s, %d cores, nofile %d, "
          "load average %s"
          % (a.n, a.slow_ms, "stream" if a.stream else "non-stream", os.cpu_count(),
             L.raise_nofile(max(2 * a.n + 1024, 4096)),
             " ".join("%.2f" % x for x in os.getloadavg())), flush=True)
    t0 = time.monotonic()
    fig = L.concurrency_run(a.n, a.slow_ms, timeout=120.0, stream=a.stream,
                            barrier=not a.no_barrier)
    print(L.format_figures(fig))
    if a.direct:
        base = direct(a.n, a.slow_ms)
        print("direct to upstream  ok %d, wall %.2f s, p50/p99 %.3f / %.3f s"
              % (base["ok"], base["wall_s"], base["p50_s"], base["p99_s"]))
        fig["direct"] = base
    if a.json:
        print(json.dumps(fig, sort_keys=True))
    print("bench took %.1f s" % (time.monotonic() - t0))
    good = fig.get("ok") == a.n and fig.get("clean_exit")
    good = good and (a.no_barrier or fig.get("barrier_ok") == a.n)
    good = good and fig.get("threads_before") == fig.get("threads_during_max")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
