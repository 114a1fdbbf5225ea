#!/usr/bin/env python3
"""t_smoke — the request path of banditd end to end, against fake_upstream_min.

Starts the fake upstream and $BANDITD (default build/banditd) with a temporary
config (arms: "dead" on a closed port, "strong", "cheap" on the fake), then
checks: byte-exact non-streaming relay with model rewrite, key injection and
the four X-Bandit-* headers; SSE relay ending in [DONE]; backpressure on a big
stream; an SSE error event when the upstream dies mid-stream; a client that
disconnects mid-stream; fallback past an unreachable arm; 400/404/405/413/502/
504 in OpenAI's error shape; relayed upstream errors; /v1/models, /healthz,
/readyz, /stats, /feedback; the key never in the daemon's output; parallel
slow requests; SIGTERM -> exit 0 with no sanitizer report.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BANDITD = os.environ.get("BANDITD") or os.path.join(ROOT, "build", "banditd")
SECRET = "sk-smoke-secret-4f2a9c"
# Slow runs (the daemon under valgrind, tests/README.md) stretch start/stop waits.
SCALE = max(1.0, float(os.environ.get("E2E_TIMEOUT_SCALE") or 1))
PRICES = {"strong": (5.0, 15.0), "cheap": (0.5, 1.5), "dead": (0.1, 0.1)}

procs = []


def wait_file(path, proc, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            with open(path) as f:
                txt = f.read().strip()
            if txt:
                return int(txt)
        if proc.poll() is not None:
            raise RuntimeError("process exited early with %s" % proc.returncode)
        time.sleep(0.02)
    raise RuntimeError("timed out waiting for %s" % path)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Resp:
    def __init__(self, r, body):
        self.status = r.status
        self.headers = {k.lower(): v for k, v in r.getheaders()}
        self.body = body

    def h(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)


def req(port, method, path, body=None, headers=None, timeout=20):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    c.request(method, path, body=body, headers=hdrs)
    r = c.getresponse()
    out = Resp(r, r.read())
    c.close()
    return out


def chat(port, model, content, stream=False, headers=None, **extra):
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return req(port, "POST", "/v1/chat/completions", b, headers)


def check_error(r, status, code=None, param=None):
    assert r.status == status, (r.status, r.body[:300])
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["message"], e
    assert "type" in e and "param" in e and "code" in e, e
    if code is not None:
        assert e["code"] == code, e
    if param is not None:
        assert e["param"] == param, e
    assert r.h("content-type").startswith("application/json"), r.headers


def sse_events(body):
    evs = []
    for block in body.decode().split("\n\n"):
        block = block.strip()
        if block.startswith("data: "):
            evs.append(block[6:])
    return evs


def main():
    tmp = tempfile.mkdtemp(prefix="banditd-smoke-")
    dump = os.path.join(tmp, "dump")
    os.mkdir(dump)
    fake_pf = os.path.join(tmp, "fake.port")
    fake = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_upstream_min.py"),
                             "--port-file", fake_pf, "--dump-dir", dump])
    procs.append(fake)
    fport = wait_file(fake_pf, fake)
    base = "http://127.0.0.1:%d/v1" % fport

    def arm(name, url, timeout_ms=int(10000 * SCALE)):
        return {"name": name, "base_url": url, "model": "fake-%s-model" % name,
                "api_key_env": "SMOKE_KEY", "price_in_per_mtok": PRICES[name][0],
                "price_out_per_mtok": PRICES[name][1], "timeout_ms": timeout_ms,
                "connect_timeout_ms": 2000}

    cfg = {"listen": "127.0.0.1:1",  # overridden by --listen 127.0.0.1:0
           "arms": [arm("dead", "http://127.0.0.1:%d/v1" % closed_port()),
                    arm("strong", base), arm("cheap", base + "/", timeout_ms=1000)],
           "aliases": ["auto"],
           "store": {"path": ""},
           "limits": {"max_body_bytes": 65536},
           "log": {"level": "info"}}
    cfg_path = os.path.join(tmp, "banditd.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)

    # --check-config and --version first.
    out = subprocess.run([BANDITD, "--check-config", cfg_path], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out
    bad = os.path.join(tmp, "bad.json")
    with open(bad, "w") as f:
        f.write('{"arms": [], "bogus": 1}')
    out = subprocess.run([BANDITD, "--check-config", bad], capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout.strip() != "ok", out
    out = subprocess.run([BANDITD, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "0.1.0" in out.stdout, out

    pf = os.path.join(tmp, "banditd.port")
    env = dict(os.environ, SMOKE_KEY=SECRET)
    so = open(os.path.join(tmp, "stdout"), "wb")
    se = open(os.path.join(tmp, "stderr"), "wb")
    d = subprocess.Popen([BANDITD, "--config", cfg_path, "--listen", "127.0.0.1:0",
                          "--port-file", pf], env=env,
                         stdout=so, stderr=se)
    procs.append(d)
    port = wait_file(pf, d, 10.0 * SCALE)

    results = []

    def case(fn):
        name = fn.__name__
        try:
            fn()
            results.append((name, None))
            print("PASS", name, flush=True)
        except Exception:
            results.append((name, traceback.format_exc()))
            print("FAIL", name, flush=True)
            traceback.print_exc()
        return fn

    state = {}

    @case
    def nonstream_relay_byte_exact():
        r = chat(port, "strong", "hi there")
        assert r.status == 200, (r.status, r.body)
        j = r.json()
        with open(os.path.join(dump, j["id"]), "rb") as f:
            assert f.read() == r.body, "body not relayed byte for byte"
        assert j["echo"]["model"] == "fake-strong-model", j["echo"]
        assert j["echo"]["authorization"] == "Bearer " + SECRET, j["echo"]
        assert re.fullmatch(r"[0-9a-f]{32}", r.h("x-bandit-request-id")), r.headers
        assert r.h("x-bandit-arm") == "strong"
        assert r.h("x-bandit-fallbacks") == "0"
        want = (12 * PRICES["strong"][0] + 7 * PRICES["strong"][1]) / 1e6
        assert abs(float(r.h("x-bandit-cost-usd")) - want) < 1e-9, r.h("x-bandit-cost-usd")
        assert r.h("content-type") == "application/json"
        state["rid"] = r.h("x-bandit-request-id")

    @case
    def stream_relay():
        r = chat(port, "strong", "stream please", stream=True)
        assert r.status == 200, (r.status, r.body)
        assert r.h("content-type").startswith("text/event-stream"), r.headers
        for h in ("x-bandit-request-id", "x-bandit-arm", "x-bandit-cost-usd",
                  "x-bandit-fallbacks"):
            assert r.h(h), (h, r.headers)
        evs = sse_events(r.body)
        assert evs[-1] == "[DONE]", evs[-3:]
        first = json.loads(evs[0])
        assert first["echo"]["model"] == "fake-strong-model"
        assert first["echo"]["include_usage"] is True, first["echo"]
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                       for e in evs[:-1] if json.loads(e)["choices"])
        assert text == "Hello stream!", text
        with open(os.path.join(dump, first["id"]), "rb") as f:
            assert f.read() == r.body, "stream not relayed byte for byte"

    @case
    def big_stream_backpressure():
        # 3000 KB of events through a 1 MiB relay buffer, read slowly at first.
        b = json.dumps({"model": "strong", "stream": True,
                        "messages": [{"role": "user", "content": "__big_stream_3000__"}]})
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30 * SCALE)
        c.request("POST", "/v1/chat/completions", body=b,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        got = [r.read(1024)]
        time.sleep(1.0)  # let the relay buffer fill: curl must pause, not grow
        got.append(r.read())
        c.close()
        evs = sse_events(b"".join(got))
        assert evs[-1] == "[DONE]", evs[-2:]
        n = sum(1 for e in evs[:-1] if json.loads(e)["choices"]
                and json.loads(e)["choices"][0]["delta"].get("content") == "x" * 1000)
        assert n == 3000, n

    @case
    def stream_upstream_dies():
        r = chat(port, "strong", "__die_mid_stream__", stream=True)
        assert r.status == 200
        evs = sse_events(r.body)
        assert "[DONE]" not in evs, evs
        last = json.loads(evs[-1])
        assert "error" in last and last["error"]["code"] == "upstream_error", last

    @case
    def client_disconnects_mid_stream():
        s = socket.create_connection(("127.0.0.1", port))
        b = json.dumps({"model": "strong", "stream": True,
                        "messages": [{"role": "user", "content": "__slow_stream__"}]}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(b), b))
        data = s.recv(4096)
        assert b"200" in data.split(b"\r\n")[0], data[:100]
        s.close()
        time.sleep(0.3)
        assert chat(port, "strong", "still there?").status == 200

    @case
    def fallback_past_dead_arm():
        r = chat(port, "auto", "route me", headers={"X-Bandit-Preference": "best"})
        assert r.status == 200, (r.status, r.body)
        assert r.h("x-bandit-arm") in ("strong", "cheap"), r.headers
        assert r.h("x-bandit-fallbacks") in ("0", "1"), r.headers

    @case
    def debug_scores():
        r = chat(port, "auto", "scores", headers={"X-Bandit-Debug": "1"})
        assert r.status == 200
        sc = r.h("x-bandit-scores")
        assert sc and all(n in sc for n in ("dead", "strong", "cheap")), sc

    @case
    def errors_400():
        r = req(port, "POST", "/v1/chat/completions", b"{not json",
                {"Content-Type": "application/json"})
        check_error(r, 400)
        r = req(port, "POST", "/v1/chat/completions", {"model": "auto"})
        check_error(r, 400, param="messages")
        r = chat(port, "auto", "x", headers={"X-Bandit-Preference": "garbage!"})
        check_error(r, 400)

    @case
    def errors_404_405():
        check_error(chat(port, "no-such-model", "x"), 404, code="model_not_found", param="model")
        check_error(req(port, "GET", "/nope"), 404)
        r = req(port, "GET", "/v1/chat/completions")
        check_error(r, 405)
        assert r.h("allow") == "POST", r.headers
        r = req(port, "POST", "/healthz", b"{}")
        check_error(r, 405)

    @case
    def errors_413():
        big = json.dumps({"model": "auto", "messages": [
            {"role": "user", "content": "y" * 100000}]}).encode()
        check_error(req(port, "POST", "/v1/chat/completions", big,
                        {"Content-Type": "application/json"}), 413)
        # chunked upload (no Content-Length): discovered while reading
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/v1/chat/completions", body=iter([big[:50000], big[50000:]]),
                  headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = c.getresponse()
        check_error(Resp(r, r.read()), 413)
        c.close()

    @case
    def upstream_failures():
        check_error(chat(port, "dead", "x"), 502, code="upstream_error")
        check_error(chat(port, "cheap", "__sleep_2500__"), 504, code="upstream_timeout")
        r = chat(port, "strong", "__status_500__")
        assert r.status == 500 and r.json()["error"]["code"] == "fake", (r.status, r.body)
        assert r.h("x-bandit-arm") == "strong"
        r = chat(port, "strong", "__status_429__", stream=True)
        assert r.status == 429 and r.json()["error"]["code"] == "fake", (r.status, r.body)

    @case
    def parallel_slow_requests():
        out = []

        def one(i):
            try:
                out.append(chat(port, "strong", "__sleep_500__ %d" % i).status)
            except Exception as e:  # noqa: BLE001
                out.append(repr(e))
        ts = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        t0 = time.time()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.time() - t0
        assert out == [200] * 40, out
        assert took < 5.0, took  # concurrent, not one after another (40 x 0.5 s)

    @case
    def models_health_stats():
        r = req(port, "GET", "/v1/models")
        assert r.status == 200
        j = r.json()
        assert j["object"] == "list"
        ids = [m["id"] for m in j["data"]]
        assert set(ids) == {"auto", "dead", "strong", "cheap"}, ids
        assert all(m["object"] == "model" for m in j["data"])
        r = req(port, "GET", "/healthz")
        assert r.status == 200 and r.json()["status"] == "ok"
        assert req(port, "GET", "/readyz").status == 200
        r = req(port, "GET", "/stats")
        assert r.status == 200, r.body
        st = {a["name"]: a for a in r.json()["arms"]}
        assert st["strong"]["pulls"] >= 1, st

    @case
    def feedback_route():
        rid = state["rid"]
        r = req(port, "POST", "/feedback", {"request_id": rid, "reward": 1})
        assert r.status == 200, (r.status, r.body)
        r = req(port, "POST", "/v1/feedback", {"request_id": rid, "reward": 1})
        check_error(r, 409)
        check_error(req(port, "POST", "/feedback", {"request_id": "0" * 32, "reward": 1}), 404)

    @case
    def alive_and_clean_shutdown():
        assert d.poll() is None, "daemon died"
        assert req(port, "GET", "/healthz").status == 200
        d.send_signal(signal.SIGTERM)
        rc = d.wait(timeout=10 * SCALE)
        assert rc == 0, rc
        so.close()
        se.close()
        logs = b""
        for n in ("stdout", "stderr"):
            with open(os.path.join(tmp, n), "rb") as f:
                logs += f.read()
        assert SECRET.encode() not in logs, "API key leaked into the daemon's output"
        assert b"Sanitizer" not in logs and b"runtime error" not in logs, logs[-3000:]
        assert b'"msg":"listening"' in logs and b'"msg":"request"' in logs

    failed = [n for n, e in results if e]
    print("%d passed, %d failed" % (len(results) - len(failed), len(failed)))
    if failed:
        with open(os.path.join(tmp, "stderr"), "rb") as f:
            sys.stdout.write(f.read()[-4000:].decode(errors="replace"))
    return 1 if failed else 0


if __name__ == "__main__":
    rc = 1
    try:
        rc = main()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    sys.exit(rc)
