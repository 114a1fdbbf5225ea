#!/usr/bin/env python3
"""End-to-end: every error banditd answers has the right status and OpenAI's shape
{"error":{"message","type","param","code"}}, and the daemon keeps serving after them.

Client errors (400/404/405/413) run against one daemon with two healthy arms;
upstream failures each get a daemon whose only arm fails in one way (refused
connection -> 502, hanging upstream with a short timeout_ms -> 504, upstream 500
-> 500 or 502), so no fallback can hide the failure.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402
import fake_upstream as F  # noqa: E402

MAX_BODY = 65536
KEYS = L.DEFAULT_KEYS
fake = L.FakeUpstream()
ARMS = L.default_arms(fake)
daemons = []


def start(arms, **kw):
    b = L.Banditd(arms, env=KEYS, **kw).start()
    daemons.append(b)
    return b


try:
    d = start(ARMS, limits={"max_body_bytes": MAX_BODY})
    dead = start([L.arm("dead", "http://127.0.0.1:%d/v1" % L.closed_port(), "fake-dead",
                        "E2E_KEY_CHEAP", timeout_ms=3000, connect_timeout_ms=1000)])
    hang = start([L.arm("hangs", fake.base_url, "hang", "E2E_KEY_CHEAP", timeout_ms=800,
                        connect_timeout_ms=1000)])
    fails = start([L.arm("fails", fake.base_url, "status:500", "E2E_KEY_CHEAP", timeout_ms=3000)])
except Exception as e:  # noqa: BLE001
    print("FAIL setup: %s" % e)
    print("0 passed, 1 failed")
    sys.exit(1)

MSGS = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def err(resp, status, param=None):
    e = L.assert_openai_error(resp, status)
    if param is not None and e["param"] is not None:
        assert e["param"] == param, "error.param %r, want %r" % (e["param"], param)
    return e


def post(daemon, body, headers=None, path=CHAT, timeout=30):
    return daemon.request("POST", path, body, headers, timeout)


# --- 400: bad JSON and bad fields -----------------------------------------


def t_invalid_json():
    err(post(d, b"{not json"), 400)


def t_truncated_json():
    err(post(d, b'{"model":"auto","messages":[{"role":"user","content":"hi"}'), 400)


def t_empty_body():
    err(post(d, b""), 400)


def t_body_not_object():
    err(post(d, b'["model","auto"]'), 400)
    err(post(d, b'"just a string"'), 400)


def t_messages_missing():
    err(post(d, {"model": "auto"}), 400, "messages")


def t_messages_empty():
    err(post(d, {"model": "auto", "messages": []}), 400, "messages")


def t_messages_wrong_type():
    err(post(d, {"model": "auto", "messages": "hi"}), 400, "messages")
    err(post(d, {"model": "auto", "messages": {"role": "user"}}), 400, "messages")
    err(post(d, {"model": "auto", "messages": ["hi"]}), 400)


def t_message_without_role():
    err(post(d, {"model": "auto", "messages": [{"content": "hi"}]}), 400)


def t_model_missing():
    err(post(d, {"messages": MSGS}), 400, "model")


def t_model_wrong_type():
    err(post(d, {"model": 42, "messages": MSGS}), 400, "model")


def t_stream_wrong_type():
    err(post(d, {"model": "auto", "messages": MSGS, "stream": "yes"}), 400, "stream")


def t_invalid_preference():
    r = post(d, {"model": "auto", "messages": MSGS}, headers={"X-Bandit-Preference": "banana"})
    err(r, 400)


# --- 404 / 405 / 413 -------------------------------------------------------


def t_unknown_model():
    e = err(post(d, {"model": "no-such-model", "messages": MSGS}), 404, "model")
    assert "no-such-model" in e["message"] or e["param"] == "model", e


def t_unknown_path():
    err(d.request("GET", "/v1/nope"), 404)
    err(post(d, {"model": "auto", "messages": MSGS}, path="/v2/chat/completions"), 404)
    err(d.request("GET", "/"), 404)


def t_wrong_method():
    r = d.request("GET", CHAT)
    err(r, 405)
    allow = r.header("Allow")
    assert allow is None or "POST" in allow, "Allow %r" % allow
    err(d.request("DELETE", "/v1/models"), 405)
    err(d.request("PUT", CHAT, {"model": "auto", "messages": MSGS}), 405)


def t_body_over_cap():
    pad = "x" * (MAX_BODY + 1000)
    r = post(d, {"model": "auto", "messages": [{"role": "user", "content": pad}]})
    err(r, 413)


def t_body_far_over_cap():
    pad = "y" * (4 * MAX_BODY)
    r = post(d, {"model": "auto", "messages": [{"role": "user", "content": pad}]})
    err(r, 413)


def t_body_just_under_cap_ok():
    base = len(json.dumps({"model": "cheap", "messages": [{"role": "user", "content": ""}]}))
    text = "z" * (MAX_BODY - base - 10)
    r = post(d, {"model": "cheap", "messages": [{"role": "user", "content": text}]})
    assert r.status == 200, r
    assert r.body == F.echo_body("fake-cheap-1", "Bearer " + KEYS["E2E_KEY_CHEAP"], text)


def t_feedback_unknown_id():
    err(post(d, {"request_id": "0" * 32, "reward": 1.0}, path="/feedback"), 404)


def t_feedback_invalid_json():
    err(post(d, b"{", path="/feedback"), 400)


# --- upstream failures -----------------------------------------------------


def t_upstream_refused_502():
    for model in ("dead", "auto"):
        t0 = time.monotonic()
        r = post(dead, {"model": model, "messages": MSGS})
        err(r, 502)
        assert time.monotonic() - t0 < 10, "502 took %.1fs" % (time.monotonic() - t0)
    r = post(dead, {"model": "dead", "messages": MSGS, "stream": True})
    err(r, 502)


def t_upstream_hang_504():
    t0 = time.monotonic()
    r = post(hang, {"model": "hangs", "messages": MSGS}, timeout=20)
    took = time.monotonic() - t0
    err(r, 504)
    assert 0.5 < took < 8, "504 after %.2fs with timeout_ms=800" % took


def t_upstream_hang_stream_504():
    r = post(hang, {"model": "hangs", "messages": MSGS, "stream": True}, timeout=20)
    # nothing was relayed yet, so a plain JSON error is possible; an SSE 200
    # would have to carry an error event
    if r.status == 200:
        ev = L.parse_sse(r.body)
        assert ev and "error" in json.loads(ev[-1]), "silent 200 on a timed-out stream: %r" % r
    else:
        err(r, 504)


def t_upstream_500():
    r = post(fails, {"model": "fails", "messages": MSGS})
    assert r.status in (500, 502), "upstream 500 relayed as %r" % r
    L.assert_openai_error(r, r.status)
    r = post(fails, {"model": "fails", "messages": MSGS, "stream": True})
    assert r.status in (500, 502), "streamed upstream 500 relayed as %r" % r
    L.assert_openai_error(r, r.status)


# --- still serving ---------------------------------------------------------


def t_normal_request_still_works():
    for text in ("after the errors", "and once more"):
        r = post(d, {"model": "auto", "messages": [{"role": "user", "content": text}]})
        assert r.status == 200, r
        h = L.check_bandit_headers(r, arms={"cheap", "strong"})
        a = {x["name"]: x for x in ARMS}[h["arm"]]
        assert r.body == F.echo_body(a["model"], "Bearer " + KEYS[a["api_key_env"]], text)
    for b in daemons:
        assert b.request("GET", "/healthz").status == 200


def t_no_key_leaks():
    for b in daemons:
        for r in b.responses:
            for s in KEYS.values():
                assert s.encode() not in r.body, "key leaked in %r" % r
                assert all(s not in v for _, v in r.headers), "key leaked in headers"
        log = b.log_text()
        assert all(s not in log for s in KEYS.values()), "key in banditd log"


def teardown():
    problems = []
    for b in daemons:
        try:
            b.finish()
        except AssertionError as e:
            problems.append(str(e))
    fake.stop()
    assert not problems, "\n".join(problems)


L.run_tests(
    [
        ("invalid_json_400", t_invalid_json),
        ("truncated_json_400", t_truncated_json),
        ("empty_body_400", t_empty_body),
        ("body_not_object_400", t_body_not_object),
        ("messages_missing_400", t_messages_missing),
        ("messages_empty_400", t_messages_empty),
        ("messages_wrong_type_400", t_messages_wrong_type),
        ("message_without_role_400", t_message_without_role),
        ("model_missing_400", t_model_missing),
        ("model_wrong_type_400", t_model_wrong_type),
        ("stream_wrong_type_400", t_stream_wrong_type),
        ("invalid_preference_400", t_invalid_preference),
        ("unknown_model_404", t_unknown_model),
        ("unknown_path_404", t_unknown_path),
        ("wrong_method_405", t_wrong_method),
        ("body_over_cap_413", t_body_over_cap),
        ("body_far_over_cap_413", t_body_far_over_cap),
        ("body_just_under_cap_200", t_body_just_under_cap_ok),
        ("feedback_unknown_id_404", t_feedback_unknown_id),
        ("feedback_invalid_json_400", t_feedback_invalid_json),
        ("upstream_refused_502", t_upstream_refused_502),
        ("upstream_hang_504", t_upstream_hang_504),
        ("upstream_hang_stream_504", t_upstream_hang_stream_504),
        ("upstream_500", t_upstream_500),
        ("normal_request_still_works", t_normal_request_still_works),
        ("no_key_leaks", t_no_key_leaks),
    ],
    teardown=teardown,
    title="t_errors",
)
