#!/usr/bin/env python3
"""Streaming time-to-first-byte overhead of banditd over a direct call (issue 9).

Starts the e2e fake upstream (tests/e2e/fake_upstream.py) and banditd (LinUCB
over 2 arms that both point at it, behaviour stream:N:MS) and sends the same
streaming chat request alternately straight to the upstream and through
banditd, one at a time on a fresh connection each. For each request it
records, from the moment the request is written: the time to the response
header block (TTFH), to the first SSE `data:` event (TTFB) and to `[DONE]`.
Prints medians / p90 / p99 and banditd's overhead (banditd − direct).

    python3 bench/stream_ttfb.py [--n 300] [--events 8] [--gap-ms 5]
    env BANDITD (default build/banditd)
"""

import argparse
import json
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import e2elib as L  # noqa: E402

USER_TEXT = ("Explain, with a short C example, how an event loop multiplexes many slow "
             "upstream HTTP calls over one thread, and what backpressure means for a "
             "streaming relay. Keep it under 200 words.")


def request_bytes(port, model):
    body = json.dumps({"model": model, "stream": True, "max_tokens": 256,
                       "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": USER_TEXT}]}).encode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\nContent-Length: %d\r\n\r\n" % (port, len(body)))
    return head.encode() + body


def one(port, data, timeout=30.0):
    """(ttfh, ttfb, total) in ms for one streaming request, or None on failure."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    ttfh = ttfb = None
    try:
        t0 = time.perf_counter()
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            now = time.perf_counter()
            if not chunk:
                break
            buf += chunk
            if ttfh is None and b"\r\n\r\n" in buf:
                ttfh = (now - t0) * 1e3
                if not buf.startswith(b"HTTP/1.1 200"):
                    return None
            if ttfh is not None and ttfb is None and b"data:" in buf.split(b"\r\n\r\n", 1)[1]:
                ttfb = (now - t0) * 1e3
            if b"[DONE]" in buf:
                return ttfh, ttfb, (now - t0) * 1e3
    finally:
        s.close()
    return None


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="requests per target")
    ap.add_argument("--events", type=int, default=8, help="content deltas per stream")
    ap.add_argument("--gap-ms", type=int, default=5, help="upstream delay between events")
    a = ap.parse_args()
    model = "stream:%d:%d" % (a.events, a.gap_ms)
    fake = L.FakeUpstream(record=False)
    d = None
    try:
        d = L.Banditd([L.arm("s%d" % i, fake.base_url, model, "E2E_KEY_CHEAP",
                             price_in=0.2 + i, price_out=0.6 + 3 * i) for i in range(2)],
                      env=L.DEFAULT_KEYS, log_level="warn")
        d.start()
        targets = {"direct": (fake.port, request_bytes(fake.port, model)),
                   "banditd": (d.port, request_bytes(d.port, "auto"))}
        for name, (port, data) in targets.items():  # warm-up (upstream pool, caches)
            for _ in range(5):
                if one(port, data) is None:
                    raise SystemExit("stream_ttfb: %s answered badly" % name)
        res = {k: [] for k in targets}
        fails = {k: 0 for k in targets}
        for _ in range(a.n):
            for name, (port, data) in targets.items():
                r = one(port, data)
                if r is None:
                    fails[name] += 1
                else:
                    res[name].append(r)
        print("stream_ttfb: %d streaming requests per target, upstream %s (%d events, %d ms "
              "apart), %d cores, load average %s"
              % (a.n, model, a.events, a.gap_ms, os.cpu_count(),
                 " ".join("%.2f" % x for x in os.getloadavg())))
        print()
        print("| target | TTFH p50 ms | TTFB p50 ms | TTFB p90 ms | TTFB p99 ms "
              "| total p50 ms | failures |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        med = {}
        for name in targets:
            h = [r[0] for r in res[name]]
            b = [r[1] for r in res[name]]
            t = [r[2] for r in res[name]]
            med[name] = (statistics.median(b), pct(b, 90), pct(b, 99))
            print("| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %d |"
                  % (name, statistics.median(h), med[name][0], med[name][1], med[name][2],
                     statistics.median(t), fails[name]))
        o = [med["banditd"][i] - med["direct"][i] for i in range(3)]
        print()
        print("banditd TTFB overhead over direct: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms"
              % tuple(o))
        d.finish()
        d = None
        return 1 if any(fails.values()) else 0
    finally:
        if d is not None:
            d.stop()
        fake.stop()


if __name__ == "__main__":
    sys.exit(main())
