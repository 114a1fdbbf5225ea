#!/usr/bin/env python3
"""t_shutdown — graceful shutdown.

1. SIGTERM while 100 slow streams are in flight (fake upstream: 12 events,
   150 ms apart): banditd stops accepting (new connections are refused), every
   stream completes with [DONE] and no error event, banditd exits 0 and logs
   "drained":true; the state is flushed (feedback given before the SIGTERM is
   in the store: a restart with the same store sees the arm's feedback).
2. limits.shutdown_grace_s = 1 with requests that never finish: banditd cuts
   them after the grace period and still exits 0, logging "drained":false."""

import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

N = 100
S = {}


def stream_client(port, i, out, started):
    body = {"model": "s", "stream": True,
            "messages": [{"role": "user", "content": "@fake stream:12:150 n%d" % i}]}
    try:
        c = E.http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/chat/completions", json.dumps(body),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        started.append(i)
        data = r.read()
        out[i] = (r.status, data)
        c.close()
    except Exception as e:  # noqa: BLE001
        out[i] = (None, repr(e).encode())


def drain_completes_streams():
    E.raise_nofile(4096)
    up = E.FakeUpstream(record=False)
    S["up"] = up
    d = E.Banditd([E.arm("s", up.base_url, "echo")], limits={"shutdown_grace_s": 30}).start()
    S["d"] = d
    r = d.chat({"model": "s", "messages": [{"role": "user", "content": "before"}]})
    rid = r.header("X-Bandit-Request-Id")
    assert d.request("POST", "/feedback", {"request_id": rid, "reward": 1}).status == 200
    out, started = {}, []
    ths = [threading.Thread(target=stream_client, args=(d.port, i, out, started), daemon=True)
           for i in range(N)]
    for t in ths:
        t.start()
    end = time.monotonic() + 20
    while len(started) < N and time.monotonic() < end:
        time.sleep(0.02)
    assert len(started) == N, "only %d streams started" % len(started)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    # New connections are refused while draining (the listener is closed).
    refused = False
    end = time.monotonic() + 3
    while time.monotonic() < end and not refused:
        try:
            socket.create_connection(("127.0.0.1", d.port), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    assert refused, "banditd still accepts connections after SIGTERM"
    assert d.alive(), "banditd exited before its streams finished"
    for t in ths:
        t.join(40)
    rc = d.stop(timeout=40)
    took = time.monotonic() - t0
    assert rc == 0, "exit status %r%s" % (rc, E._tail(d.stderr_path))
    assert d.sanitizer_report() is None, d.sanitizer_report()
    bad = [(i, st, data[-200:]) for i, (st, data) in out.items()
           if st != 200 or E.parse_sse(data)[-1:] != ["[DONE]"] or b'"error"' in data]
    assert len(out) == N and not bad, "%d incomplete streams, e.g. %r" % (len(bad), bad[:3])
    log = d.log_text()
    assert '"drained":true' in log, log[-2000:]
    print("    %d streams drained in %.2fs after SIGTERM" % (N, took))
    # State flushed: a restart on the same store still knows the feedback.
    d2 = E.Banditd([E.arm("s", up.base_url, "echo")])
    d2.config_path = d.config_path
    d2.dir = d.dir
    d2.start()
    st = {a["name"]: a for a in d2.request("GET", "/stats").json()["arms"]}
    assert st["s"]["feedback"] >= 1, st
    S["d2"] = d2


def grace_deadline_cuts():
    up = S["up"]
    d = E.Banditd([E.arm("h", up.base_url, "hang")], limits={"shutdown_grace_s": 1}).start()
    out = {}

    def hang(i):
        try:
            out[i] = E.request(d.port, "POST", "/v1/chat/completions",
                               {"model": "h", "messages": [{"role": "user", "content": "x"}]},
                               timeout=30).status
        except OSError as e:
            out[i] = repr(e)

    ths = [threading.Thread(target=hang, args=(i,), daemon=True) for i in range(5)]
    for t in ths:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    rc = d.stop(timeout=20)
    took = time.monotonic() - t0
    assert rc == 0, rc
    assert 0.8 <= took < 15, took
    assert '"drained":false' in d.log_text(), d.log_text()[-1500:]
    for t in ths:
        t.join(10)
    assert len(out) == 5, out


def teardown():
    S["d2"].finish()


if __name__ == "__main__":
    E.run_tests([("drain_completes_streams", drain_completes_streams),
                 ("grace_deadline_cuts", grace_deadline_cuts)],
                teardown=teardown, title="t_shutdown")
