#!/usr/bin/env python3
"""Circuit breaker end to end: an arm that starts failing is dropped within N
requests (N = health.failure_threshold) and readmitted after it recovers.

Arm "cheap" is always ranked first (the preference is all cost and it is far
cheaper), arm "backup" answers when it fails. The fake's /_control endpoint
switches "cheap" between failing (500) and healthy."""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib  # noqa: E402

THRESHOLD = 3
COOLDOWN_MS = 800
PREF = {"X-Bandit-Preference": "cost=1"}

fake = e2elib.FakeUpstream(record=True)
arms = [
    e2elib.arm("cheap", fake.base_url, "cheap-model", price_in=0.01, price_out=0.01),
    e2elib.arm("backup", fake.base_url, "backup-model", price_in=50, price_out=50),
]
d = e2elib.Banditd(
    arms,
    extra={"health": {"failure_threshold": THRESHOLD, "cooldown_ms": COOLDOWN_MS}},
).start()


def control(spec):
    r = e2elib.request(fake.port, "POST", "/_control",
                       json.dumps({"models": {"cheap-model": spec}}).encode())
    assert r.status == 200, r


def cheap_calls():
    return sum(1 for rec in fake.chat_records() if '"cheap-model"' in rec["body"])


def chat(i):
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello %d" % i}]}
    r = d.chat(json.dumps(body).encode(), headers=PREF)
    assert r.status == 200, r
    return r


def arm_stats(name):
    st = d.request("GET", "/stats").json()
    return next(a for a in st["arms"] if a["name"] == name)


def circuit_gauge(name):
    """banditd_circuit_state{arm=name} from GET /metrics (0 closed, 1 open, 2 half-open)."""
    m = d.request("GET", "/metrics")
    assert m.status == 200, m
    pat = re.compile(r'^banditd_circuit_state\{arm="%s"\} (\S+)$' % re.escape(name), re.M)
    found = pat.findall(m.body.decode("utf-8"))
    assert len(found) == 1, "banditd_circuit_state for %s: %r" % (name, found)
    return float(found[0])


def test_healthy_first():
    r = chat(0)
    assert r.header("X-Bandit-Arm") == "cheap", r.header("X-Bandit-Arm")
    assert r.header("X-Bandit-Fallbacks") == "0"
    assert arm_stats("cheap")["circuit"] == "closed"
    assert circuit_gauge("cheap") == 0 and circuit_gauge("backup") == 0


def test_dropped_within_threshold():
    control("status:500")
    before = cheap_calls()
    for i in range(20):
        r = chat(100 + i)
        assert r.header("X-Bandit-Arm") == "backup", r.header("X-Bandit-Arm")
    got = cheap_calls() - before
    # Exactly THRESHOLD failures reach it, then it leaves the candidate set.
    assert got == THRESHOLD, "failing arm still received %d requests (threshold %d)" % (
        got, THRESHOLD)
    st = arm_stats("cheap")
    assert st["circuit"] == "open" and st["healthy"] is False, st
    assert st["circuit_opens"] >= 1, st
    assert circuit_gauge("cheap") == 1, "open circuit not shown by /metrics"
    assert circuit_gauge("backup") == 0
    # Answers after the opening did not need a fallback.
    r = chat(200)
    assert r.header("X-Bandit-Fallbacks") == "0", r.header("X-Bandit-Fallbacks")
    rd = d.request("GET", "/readyz")
    assert rd.status == 200, rd  # backup is still closed


def test_failed_probe_reopens():
    time.sleep(COOLDOWN_MS / 1000.0 + 0.2)
    before = cheap_calls()
    r = chat(300)  # the probe goes to cheap, fails, backup answers
    assert r.header("X-Bandit-Arm") == "backup"
    assert r.header("X-Bandit-Fallbacks") == "1", r.header("X-Bandit-Fallbacks")
    assert cheap_calls() - before == 1
    for i in range(5):
        chat(310 + i)
    assert cheap_calls() - before == 1, "re-opened circuit admitted traffic"
    assert arm_stats("cheap")["circuit"] == "open"


def test_readmitted_after_recovery():
    control(None)  # healthy again
    time.sleep(COOLDOWN_MS / 1000.0 + 0.2)
    r = chat(400)  # the half-open probe succeeds
    assert r.header("X-Bandit-Arm") == "cheap", r.header("X-Bandit-Arm")
    assert arm_stats("cheap")["circuit"] == "closed"
    assert circuit_gauge("cheap") == 0, "closed circuit still shown open by /metrics"
    for i in range(5):
        assert chat(410 + i).header("X-Bandit-Arm") == "cheap"


def test_pinned_open_arm_is_503():
    control("status:500")
    for i in range(THRESHOLD):
        chat(500 + i)
    assert arm_stats("cheap")["circuit"] == "open"
    body = {"model": "cheap", "messages": [{"role": "user", "content": "pinned"}]}
    r = d.chat(json.dumps(body).encode())
    e2elib.assert_openai_error(r, 503)
    assert r.header("Retry-After"), r
    control(None)


def test_all_open_not_ready():
    # Both arms fail: both circuits open, /readyz says not ready.
    r0 = e2elib.request(fake.port, "POST", "/_control",
                        json.dumps({"default_behavior": "status:500"}).encode())
    assert r0.status == 200
    for i in range(2 * THRESHOLD + 2):
        body = {"model": "auto", "messages": [{"role": "user", "content": "x%d" % i}]}
        d.chat(json.dumps(body).encode(), headers=PREF)
    st = d.request("GET", "/stats").json()
    assert all(a["circuit"] == "open" for a in st["arms"]), st
    assert d.request("GET", "/readyz").status == 503
    body = {"model": "auto", "messages": [{"role": "user", "content": "none"}]}
    e2elib.assert_openai_error(d.chat(json.dumps(body).encode()), 503)
    e2elib.request(fake.port, "POST", "/_control",
                   json.dumps({"default_behavior": None}).encode())


def teardown():
    d.finish()
    fake.stop()


e2elib.run_tests(
    [
        ("healthy_first", test_healthy_first),
        ("dropped_within_threshold", test_dropped_within_threshold),
        ("failed_probe_reopens", test_failed_probe_reopens),
        ("readmitted_after_recovery", test_readmitted_after_recovery),
        ("pinned_open_arm_is_503", test_pinned_open_arm_is_503),
        ("all_open_not_ready", test_all_open_not_ready),
    ],
    teardown=teardown,
    title="t_circuit",
)
