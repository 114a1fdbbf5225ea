#!/usr/bin/env python3
"""Auth end to end: client keys (environment and key file), the admin key,
feedback ownership, the loopback-only rule, and upstream keys never leaking
into responses, logs or /stats."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib  # noqa: E402

UPSTREAM_SECRET = "sk-upstream-TOPSECRET-4242"
ADMIN = "admin-key-xyz"
KEY_A, KEY_B, KEY_FILE = "client-a-key", "client-b-key", "client-file-key"

fake = e2elib.FakeUpstream(record=True)
tmp = e2elib.tmpdir()
keyfile = os.path.join(tmp, "keys.txt")
with open(keyfile, "w") as f:
    f.write("# clients\n%s\n\n" % KEY_FILE)
arms = [e2elib.arm("only", fake.base_url, "m1", key_env="UPSTREAM_KEY")]
d = e2elib.Banditd(
    arms,
    env={"UPSTREAM_KEY": UPSTREAM_SECRET, "BANDITD_KEYS": "%s,%s" % (KEY_A, KEY_B),
         "BANDITD_ADMIN": ADMIN},
    extra={"auth": {"client_keys_env": "BANDITD_KEYS", "admin_key_env": "BANDITD_ADMIN",
                    "client_keys_file": keyfile}},
).start()

BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode()


def bearer(k):
    return {"Authorization": "Bearer " + k}


def assert_401(r):
    e2elib.assert_openai_error(r, 401)
    assert r.header("WWW-Authenticate") == "Bearer", r.header("WWW-Authenticate")


def test_chat_needs_key():
    assert_401(d.chat(BODY))
    assert_401(d.chat(BODY, headers=bearer("wrong")))
    assert_401(d.chat(BODY, headers={"Authorization": "Basic " + KEY_A}))
    assert_401(d.chat(BODY, headers=bearer(KEY_A + "x")))
    assert_401(d.request("GET", "/v1/models"))
    for k in (KEY_A, KEY_B, KEY_FILE):
        r = d.chat(BODY, headers=bearer(k))
        assert r.status == 200, r
    # The client's key is not forwarded upstream: the arm's key is.
    rec = fake.chat_records()[-1]
    assert rec["headers"].get("authorization") == "Bearer " + UPSTREAM_SECRET
    assert d.request("GET", "/v1/models", headers=bearer(KEY_A)).status == 200
    # Liveness and readiness stay open.
    assert d.request("GET", "/healthz").status == 200
    assert d.request("GET", "/readyz").status == 200


def test_feedback_ownership():
    r = d.chat(BODY, headers=bearer(KEY_A))
    rid = r.header("X-Bandit-Request-Id")
    fb = json.dumps({"request_id": rid, "reward": 1}).encode()
    assert_401(d.request("POST", "/feedback", fb))
    assert_401(d.request("POST", "/feedback", fb, headers=bearer("nope")))
    r403 = d.request("POST", "/feedback", fb, headers=bearer(KEY_B))
    assert r403.status in (403, 404), r403
    e2elib.assert_openai_error(r403, r403.status)
    ok = d.request("POST", "/feedback", fb, headers=bearer(KEY_A))
    assert ok.status == 200, ok
    # The admin may give feedback on anyone's request.
    r2 = d.chat(BODY, headers=bearer(KEY_B))
    fb2 = json.dumps({"request_id": r2.header("X-Bandit-Request-Id"), "reward": 0.5}).encode()
    assert d.request("POST", "/feedback", fb2, headers=bearer(ADMIN)).status == 200


def test_admin_endpoints():
    assert_401(d.request("GET", "/stats"))
    assert_401(d.request("GET", "/stats", headers=bearer("bad")))
    e2elib.assert_openai_error(d.request("GET", "/stats", headers=bearer(KEY_A)), 403)
    st = d.request("GET", "/stats", headers=bearer(ADMIN))
    assert st.status == 200, st
    assert st.json()["arms"][0]["name"] == "only"


def test_upstream_key_never_leaks():
    d.request("GET", "/stats", headers=bearer(ADMIN))
    for r in d.responses:
        blob = (r.body or b"") + repr(r.headers).encode()
        assert UPSTREAM_SECRET.encode() not in blob, "upstream key in a response: %r" % r
        for k in (ADMIN, KEY_A, KEY_B):
            assert k.encode() not in (r.body or b""), "a client key echoed in %r" % r
    d.stop()
    log = d.log_text()
    assert UPSTREAM_SECRET not in log, "upstream key in the log"
    for k in (ADMIN, KEY_A, KEY_B, KEY_FILE):
        assert k not in log, "a client key in the log"


def test_loopback_rule():
    # No client keys and a non-loopback listen address: refuse to start.
    cfg = {"listen": "0.0.0.0:0", "arms": [e2elib.arm("a", fake.base_url, "m")]}
    path = os.path.join(tmp, "remote.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.run([e2elib.banditd_path(), "--config", path], capture_output=True,
                       timeout=20, cwd=tmp)
    assert p.returncode != 0, "banditd started on 0.0.0.0 without client keys"
    assert b"allow_unauthenticated_remote" in p.stderr, p.stderr[-500:]


def teardown():
    rep = d.sanitizer_report()
    assert rep is None, rep
    assert d.stopped_rc == 0, d.stopped_rc
    fake.stop()


e2elib.run_tests(
    [
        ("chat_needs_key", test_chat_needs_key),
        ("feedback_ownership", test_feedback_ownership),
        ("admin_endpoints", test_admin_endpoints),
        ("upstream_key_never_leaks", test_upstream_key_never_leaks),
        ("loopback_rule", test_loopback_rule),
    ],
    teardown=teardown,
    title="t_auth",
)
