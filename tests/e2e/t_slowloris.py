#!/usr/bin/env python3
"""Hostile clients at the HTTP level (light version of bench/slowloris.py):
many trickling and idle connections do not stop a normal client from being
served and memory stays bounded; an enormous header block gets a clear 4xx;
a silent connection is closed after limits.connection_timeout_s."""

import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))
import e2elib  # noqa: E402
import slowloris  # noqa: E402

e2elib.raise_nofile()
fake = e2elib.FakeUpstream(record=False)
d = e2elib.Banditd([e2elib.arm("a", fake.base_url, "echo")], limits={"connection_timeout_s": 2},
                   log_level="warn").start()


def test_slow_and_idle_connections():
    fig = slowloris.run(d.port, d.pid, n_slow=300, n_idle=100, duration=4.0, trickle_s=0.5)
    print("  figures: %r" % fig)
    assert fig["connections_opened"] >= 390, fig
    assert fig["normal_requests"] >= 5, fig
    assert fig["normal_success_rate"] >= 0.99, fig
    # Bounded: 400 hostile connections cost far less than 64 MiB.
    assert fig["rss_during_kb"] - fig["rss_before_kb"] < 64 * 1024, fig
    assert d.alive()


def test_enormous_headers():
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    big = b"X-Big: " + b"a" * (200 * 1024) + b"\r\n"
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending: also acceptable
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    if data:
        status = int(data.split(b" ", 2)[1])
        assert status in (413, 431, 400), data[:200]
    assert d.alive()
    assert d.request("GET", "/healthz").status == 200


def test_idle_connection_times_out():
    s = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    t0 = time.monotonic()
    data = s.recv(1024)  # blocks until the server closes the silent connection
    waited = time.monotonic() - t0
    s.close()
    assert data == b"", data
    assert waited < 14, waited


def teardown():
    d.finish()
    fake.stop()


e2elib.run_tests(
    [
        ("slow_and_idle_connections", test_slow_and_idle_connections),
        ("enormous_headers", test_enormous_headers),
        ("idle_connection_times_out", test_idle_connection_times_out),
    ],
    teardown=teardown,
    title="t_slowloris",
)
