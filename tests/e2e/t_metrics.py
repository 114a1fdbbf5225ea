#!/usr/bin/env python3
"""t_metrics — GET /metrics after a mixed workload: promtool validates the
exposition (check_metrics.sh) and the counters moved as expected.

Workload: 3 plain requests pinned to "cheap", 2 streams pinned to "strong", one
`auto` request whose first choice ("broken", prior 1.0, answers 503) fails over,
feedback applied / duplicate / unknown / invalid. Checked: requests by
route/arm/status, cost and tokens by arm (cost == the sum of X-Bandit-Cost-Usd
for the non-streamed answers), TTFB and upstream histograms, fallbacks of the
failing arm, feedback by result and reason, reward mean, decisions pending,
process metrics."""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
LBL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = LINE.match(ln)
        assert m, "unparsable sample line %r" % ln
        labels = tuple(sorted(LBL.findall(m.group(3) or "")))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def val(samples, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, "missing sample %s%r" % (name, labels)
    return samples[key]


S = {}


def setup():
    S["up"] = E.FakeUpstream()
    base = S["up"].base_url
    broken = E.arm("broken", base, "status:503", price_in=0.1, price_out=0.1)
    broken["prior_quality"] = 1.0
    strong = E.arm("strong", base, "stream:3:5", price_in=5.0, price_out=15.0)
    strong["prior_quality"] = 0.8
    cheap = E.arm("cheap", base, "echo", price_in=0.5, price_out=1.5)
    cheap["prior_quality"] = 0.0
    S["d"] = E.Banditd([broken, strong, cheap]).start()


def workload():
    d = S["d"]
    cost_cheap = 0.0
    ids = []
    for i in range(3):
        r = d.chat({"model": "cheap", "messages": [{"role": "user", "content": "hello %d" % i}]})
        h = E.check_bandit_headers(r, ["cheap"])
        cost_cheap += h["cost"]
        ids.append(h["request_id"])
    for i in range(2):
        r = d.chat({"model": "strong", "stream": True,
                    "messages": [{"role": "user", "content": "@fake stream:3:5 s%d" % i}]})
        assert r.status == 200, r
        assert E.parse_sse(r.body)[-1] == "[DONE]", r.body[-200:]
    r = d.chat({"model": "auto", "messages": [{"role": "user", "content": "fall over"}]},
               headers={"X-Bandit-Preference": "quality=1"})
    h = E.check_bandit_headers(r, ["strong", "cheap"], fallbacks=None)
    assert r.status == 200 and h["fallbacks"] == 1, (r, h)
    S["fallback_arm"] = h["arm"]
    if h["arm"] == "cheap":
        cost_cheap += h["cost"]
    S["cost_cheap"] = cost_cheap
    f = d.request("POST", "/feedback", {"request_id": ids[0], "reward": 0.75})
    assert f.status == 200, f
    f = d.request("POST", "/feedback", {"request_id": ids[0], "reward": 0.75})
    assert f.status == 409, f
    f = d.request("POST", "/feedback", {"request_id": "0" * 32, "reward": 1})
    assert f.status == 404, f
    f = d.request("POST", "/feedback", {"request_id": ids[1], "reward": 7})
    assert f.status == 400, f


def promtool_validates():
    m = S["d"].request("GET", "/metrics")
    assert m.status == 200, m
    assert m.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8", m.headers
    S["text"] = m.body.decode("utf-8")
    p = subprocess.run([os.path.join(HERE, "check_metrics.sh"), "-"], input=m.body,
                       capture_output=True)
    if p.returncode == 77:
        print("(promtool not installed: validation skipped)")
        return
    assert p.returncode == 0, "promtool: %s" % p.stderr.decode()


def counters_moved():
    s = parse(S["text"])
    chat = "chat_completions"
    n_cheap = 3 + (S["fallback_arm"] == "cheap")
    n_strong = 2 + (S["fallback_arm"] == "strong")
    assert val(s, "banditd_requests_total", route=chat, arm="cheap", status="2xx") == n_cheap
    assert val(s, "banditd_requests_total", route=chat, arm="strong", status="2xx") == n_strong
    assert val(s, "banditd_requests_total", route=chat, arm="broken", status="2xx") == 0
    assert val(s, "banditd_requests_total", route="feedback", arm="", status="2xx") == 1
    assert val(s, "banditd_requests_total", route="feedback", arm="", status="4xx") == 3
    assert val(s, "banditd_request_duration_seconds_count", route=chat) == 6
    assert val(s, "banditd_fallbacks_total", arm="broken") == 1
    assert val(s, "banditd_fallbacks_total", arm="cheap") == 0
    c = val(s, "banditd_cost_usd_total", arm="cheap")
    assert E.close_enough(c, S["cost_cheap"], rel=1e-6), (c, S["cost_cheap"])
    assert val(s, "banditd_cost_usd_total", arm="strong") > 0
    assert val(s, "banditd_cost_usd_total", arm="broken") == 0
    assert val(s, "banditd_tokens_total", arm="cheap", kind="prompt") > 0
    assert val(s, "banditd_tokens_total", arm="cheap", kind="completion") > 0
    assert val(s, "banditd_upstream_ttfb_seconds_count", arm="strong") >= 2
    assert val(s, "banditd_upstream_ttfb_seconds_count", arm="cheap") == 0
    assert val(s, "banditd_upstream_duration_seconds_count", arm="broken") == 1
    assert val(s, "banditd_feedback_total", result="received", reason="") == 4
    assert val(s, "banditd_feedback_total", result="applied", reason="") == 1
    assert val(s, "banditd_feedback_total", result="rejected", reason="duplicate") == 1
    assert val(s, "banditd_feedback_total", result="rejected", reason="unknown_id") == 1
    assert val(s, "banditd_feedback_total", result="rejected", reason="invalid") == 1
    assert val(s, "banditd_reward_mean", arm="cheap") == 0.75
    assert val(s, "banditd_decisions_pending") == 5, val(s, "banditd_decisions_pending")
    assert val(s, "banditd_inflight_requests") >= 1  # the scrape itself
    assert val(s, "banditd_build_info", version="0.1.0") == 1
    assert val(s, "process_resident_memory_bytes") > 1e6
    assert val(s, "process_open_fds") > 3
    assert val(s, "process_start_time_seconds") > 1.6e9


def teardown():
    S["d"].finish()


if __name__ == "__main__":
    E.run_tests([("setup", setup), ("mixed_workload", workload),
                 ("promtool_validates", promtool_validates), ("counters_moved", counters_moved)],
                teardown=teardown, title="t_metrics")
