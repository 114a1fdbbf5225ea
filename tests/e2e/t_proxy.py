#!/usr/bin/env python3
"""End-to-end: the request path of banditd against the fake upstream.

Non-streaming answers relayed byte-exact with the X-Bandit-* headers; model
rewritten and the arm's API key injected upstream (checked on what the fake
upstream recorded); keys never leak to clients or logs; pinned arms; SSE relay
(order, [DONE], include_usage forced upstream, headers before the body); an
upstream cut mid-stream ends in an SSE error event; /v1/models; health; a
feedback smoke check; clean exit 0 on SIGTERM.
"""

import http.client
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402
import fake_upstream as F  # noqa: E402

KEYS = L.DEFAULT_KEYS
fake = L.FakeUpstream()
ARMS = L.default_arms(fake)
ARM = {a["name"]: a for a in ARMS}
try:
    d = L.Banditd(ARMS, env=KEYS).start()
except Exception as e:  # noqa: BLE001
    print("FAIL setup: %s" % e)
    print("0 passed, 1 failed")
    sys.exit(1)


def key_of(arm_name):
    return KEYS[ARM[arm_name]["api_key_env"]]


def msgs(text):
    return [{"role": "user", "content": text}]


def record_for(text):
    """The single upstream request whose last user message is `text`."""
    hits = [r for r in fake.chat_records() if F.user_text_of(json.loads(r["body"])) == text]
    assert len(hits) >= 1, "upstream never saw a request with text %r" % text
    return hits[-1], json.loads(hits[-1]["body"])


def check_echo(resp, text, arms=("cheap", "strong")):
    assert resp.status == 200, resp
    h = L.check_bandit_headers(resp, arms=set(arms))
    a = ARM[h["arm"]]
    want = F.echo_body(a["model"], "Bearer " + key_of(h["arm"]), text)
    assert resp.body == want, "body not byte-exact:\n got %r\nwant %r" % (resp.body, want)
    ct = resp.header("Content-Type") or ""
    assert ct.startswith("application/json"), "Content-Type %r" % ct
    content = F.echo_content(a["model"], "Bearer " + key_of(h["arm"]), text)
    cost = L.expected_cost(text, content, a)
    assert L.close_enough(h["cost"], cost), "X-Bandit-Cost-Usd %r, want %r" % (h["cost"], cost)
    return h


def t_nonstream_auto_byte_exact():
    text = "hello proxy, auto route"
    r = d.chat({"model": "auto", "messages": msgs(text)})
    check_echo(r, text)


def t_upstream_saw_rewrite_and_key():
    text = "rewrite check 1"
    body = {
        "model": "auto",
        "messages": [{"role": "system", "content": "be brief"}] + msgs(text),
        "temperature": 0.25,
        "max_tokens": 17,
        "user": "u-42",
    }
    r = d.chat(body, headers={"Authorization": "Bearer client-key-not-for-upstream"})
    h = check_echo(r, text)
    rec, sent = record_for(text)
    assert rec["method"] == "POST" and rec["path"] == "/v1/chat/completions", rec["path"]
    assert sent["model"] == ARM[h["arm"]]["model"], "upstream model %r" % sent["model"]
    assert rec["headers"].get("authorization") == "Bearer " + key_of(h["arm"]), (
        "upstream Authorization %r" % rec["headers"].get("authorization")
    )
    for k in ("messages", "temperature", "max_tokens", "user"):
        assert sent.get(k) == body[k], "field %s changed upstream: %r" % (k, sent.get(k))
    ct = rec["headers"].get("content-type", "")
    assert ct.startswith("application/json"), "upstream Content-Type %r" % ct


def t_pinned_arms():
    for name in ("cheap", "strong", "cheap", "strong"):
        text = "pinned to %s %d" % (name, len(fake.records()))
        r = d.chat({"model": name, "messages": msgs(text)})
        h = check_echo(r, text, arms=(name,))
        assert h["arm"] == name
        rec, sent = record_for(text)
        assert sent["model"] == ARM[name]["model"], sent["model"]
        assert rec["headers"].get("authorization") == "Bearer " + key_of(name)


def t_request_ids_unique():
    ids = set()
    for i in range(5):
        r = d.chat({"model": "auto", "messages": msgs("ids %d" % i)})
        assert r.status == 200, r
        ids.add(L.check_bandit_headers(r)["request_id"])
    assert len(ids) == 5, "request ids repeat: %r" % ids


def t_keepalive_two_requests_one_connection():
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        for i in range(2):
            text = "keepalive %d" % i
            body = json.dumps({"model": "cheap", "messages": msgs(text)})
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200, (r.status, data)
            assert data == F.echo_body(ARM["cheap"]["model"], "Bearer " + key_of("cheap"), text)
    finally:
        conn.close()


def t_stream_relayed_with_usage():
    text = "@fake stream:5 streaming hello"
    body = {"model": "cheap", "messages": msgs(text), "stream": True,
            "stream_options": {"include_usage": True}}
    r = d.chat(body)
    assert r.status == 200, r
    ct = r.header("Content-Type") or ""
    assert ct.startswith("text/event-stream"), "Content-Type %r" % ct
    h = L.check_bandit_headers(r, arms={"cheap"})
    want = b"".join(F.stream_events(ARM["cheap"]["model"], text, True, 5))
    assert r.body == want, "stream not relayed byte-exact:\n got %r\nwant %r" % (r.body, want)
    ev = L.parse_sse(r.body)
    assert ev[-1] == "[DONE]"
    rec, sent = record_for(text)
    assert sent["stream"] is True
    assert sent.get("stream_options", {}).get("include_usage") is True
    assert sent["model"] == ARM["cheap"]["model"]
    assert h["arm"] == "cheap"


def t_stream_include_usage_forced():
    text = "@fake stream:3 no usage asked"
    r = d.chat({"model": "strong", "messages": msgs(text), "stream": True})
    assert r.status == 200, r
    L.check_bandit_headers(r, arms={"strong"})
    rec, sent = record_for(text)
    so = sent.get("stream_options")
    assert isinstance(so, dict) and so.get("include_usage") is True, (
        "include_usage not forced upstream: %r" % sent
    )
    model = ARM["strong"]["model"]
    with_usage = b"".join(F.stream_events(model, text, True, 3))
    # banditd may pass the usage chunk through or strip it (the client did not ask)
    assert r.body == with_usage or _strip_usage(r.body) == _strip_usage(with_usage), r.body
    ev = L.parse_sse(r.body)
    deltas = [
        c["choices"][0]["delta"].get("content")
        for c in (json.loads(e) for e in ev if e != "[DONE]")
        if c.get("choices")
    ]
    assert [x for x in deltas if x] == F.stream_deltas(text, 3), deltas
    assert ev[-1] == "[DONE]", ev[-1]


def _strip_usage(body):
    out = []
    for e in L.parse_sse(body):
        if e == "[DONE]":
            out.append(e)
            continue
        o = json.loads(e)
        if not o.get("choices"):
            continue
        o.pop("usage", None)
        out.append(json.dumps(o, sort_keys=True))
    return out


def t_stream_headers_before_body_end():
    # 3 deltas + role + finish + usage + [DONE] = 7 events, 400 ms apart (~2.8 s)
    text = "@fake stream:3:400 slow stream"
    r = d.chat({"model": "cheap", "messages": msgs(text), "stream": True})
    assert r.status == 200, r
    L.check_bandit_headers(r, arms={"cheap"})
    assert r.t_end > 2.0, "stream ended too soon: %.2fs" % r.t_end
    assert r.t_headers < r.t_end - 1.0, "headers only at %.2fs of %.2fs" % (r.t_headers, r.t_end)
    assert r.t_first is not None and r.t_first < r.t_end - 1.0, (
        "first bytes only at %r of %.2fs (buffered, not streamed)" % (r.t_first, r.t_end)
    )
    assert len(r.pieces) >= 3, "body arrived in %d piece(s)" % len(r.pieces)
    assert L.parse_sse(r.body)[-1] == "[DONE]"


def t_stream_cut_gives_sse_error():
    text = "@fake cut mid-stream failure"
    r = d.chat({"model": "cheap", "messages": msgs(text), "stream": True}, timeout=20)
    assert r.status == 200, "want 200 + in-band error, got %r" % r
    ev = L.parse_sse(r.body)
    assert ev, "empty stream body"
    assert "[DONE]" not in ev, "a cut stream must not end with [DONE]: %r" % r.body
    last = json.loads(ev[-1])
    assert isinstance(last.get("error"), dict), "last event is not an error event: %r" % ev[-1]
    assert isinstance(last["error"].get("message"), str) and last["error"]["message"]
    # whatever was relayed before the error is the upstream's bytes, unchanged
    sent = b"".join(F.cut_events(ARM["cheap"]["model"], text))
    err_at = r.body.rfind(b"data: {\"error\"")
    if err_at < 0:
        err_at = r.body.rfind(b"data:{\"error\"")
    assert sent.startswith(r.body[:err_at]), "relayed prefix differs: %r" % r.body[:err_at]


def t_big_response_byte_exact():
    text = "@fake big:1000000"
    r = d.chat({"model": "strong", "messages": msgs(text)}, timeout=30)
    assert r.status == 200, r
    L.check_bandit_headers(r, arms={"strong"})
    want = F.big_body(ARM["strong"]["model"], text, 1000000)
    assert len(r.body) == len(want) and r.body == want, "big body differs (len %d)" % len(r.body)


def t_models_list():
    r = d.request("GET", "/v1/models")
    assert r.status == 200, r
    obj = r.json()
    assert obj.get("object") == "list" and isinstance(obj.get("data"), list), obj
    ids = set()
    for m in obj["data"]:
        assert isinstance(m, dict) and isinstance(m.get("id"), str), m
        assert m.get("object") == "model", m
        ids.add(m["id"])
    for want in ("cheap", "strong", "auto"):
        assert want in ids, "%r missing from /v1/models %r" % (want, sorted(ids))


def t_health():
    r = d.request("GET", "/healthz")
    assert r.status == 200, r
    r = d.request("GET", "/readyz")
    assert r.status == 200, r


def t_feedback_smoke():
    r = d.chat({"model": "auto", "messages": msgs("feedback smoke")})
    assert r.status == 200, r
    rid = L.check_bandit_headers(r)["request_id"]
    fb = d.request("POST", "/feedback", {"request_id": rid, "reward": 0.75})
    assert fb.status == 200, "first feedback: %r" % fb
    again = d.request("POST", "/feedback", {"request_id": rid, "reward": 0.75})
    L.assert_openai_error(again, 409)


def t_no_key_leaks():
    secrets = list(KEYS.values())
    assert len(d.responses) > 10
    for r in d.responses:
        for s in secrets:
            assert s.encode() not in r.body, "API key in a response body: %r" % r
            for k, v in r.headers:
                assert s not in v, "API key in response header %s" % k
    log = d.log_text()
    for s in secrets:
        assert s not in log, "API key in banditd's log output"


def t_alive_at_end():
    assert d.alive(), "banditd died"
    r = d.request("GET", "/healthz")
    assert r.status == 200


def teardown():
    d.finish()
    fake.stop()


L.run_tests(
    [
        ("nonstream_auto_byte_exact", t_nonstream_auto_byte_exact),
        ("upstream_saw_rewrite_and_key", t_upstream_saw_rewrite_and_key),
        ("pinned_arms", t_pinned_arms),
        ("request_ids_unique", t_request_ids_unique),
        ("keepalive_two_requests_one_connection", t_keepalive_two_requests_one_connection),
        ("stream_relayed_with_usage", t_stream_relayed_with_usage),
        ("stream_include_usage_forced", t_stream_include_usage_forced),
        ("stream_headers_before_body_end", t_stream_headers_before_body_end),
        ("stream_cut_gives_sse_error", t_stream_cut_gives_sse_error),
        ("big_response_byte_exact", t_big_response_byte_exact),
        ("models_list", t_models_list),
        ("health", t_health),
        ("feedback_smoke", t_feedback_smoke),
        ("no_key_leaks", t_no_key_leaks),
        ("alive_at_end", t_alive_at_end),
    ],
    teardown=teardown,
    title="t_proxy (banditd %s)" % L.banditd_path(),
)
