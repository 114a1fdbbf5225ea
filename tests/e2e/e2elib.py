#!/usr/bin/env python3
"""e2elib — helpers for banditd's end-to-end tests (Python 3 stdlib only).

- FakeUpstream: starts fake_upstream.py on a free loopback port (port file),
  optionally recording every request it receives.
- Banditd: writes a temporary config, starts the real daemon (env BANDITD, else
  build/banditd) with `--config F --port-file P` on 127.0.0.1:0, captures its
  stdout/stderr to files, waits for /healthz, offers a raw http.client client,
  and on stop() fails if the daemon died, exited non-zero on SIGTERM, or a
  sanitizer (ASan/UBSan/LSan) printed a report.
- run_tests(): a tiny runner printing one PASS/FAIL line per case and the
  closing line "N passed, N failed"; exit status 1 on any failure.
- load(): an asyncio raw-socket client that opens N connections, then sends one
  request on each at once (the concurrency test and bench).
- ProcSampler: samples a process's thread count and RSS from /proc.
Every process started here is killed at exit (atexit), whatever happens.

As a command:  python3 e2elib.py with-daemon -- CMD ARGS...
starts a fake upstream and banditd (arms "cheap" and "strong"), runs CMD with
E2E_BASE_URL (http://127.0.0.1:PORT), E2E_PORT and E2E_RECORD set, then stops
both; exits with CMD's status, or 1 if the daemon misbehaved.
"""

import asyncio
import atexit
import http.client
import json
import os
import re
import resource
import shutil
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
FAKE = os.path.join(HERE, "fake_upstream.py")
sys.path.insert(0, HERE)
import fake_upstream  # noqa: E402  (re-exported for tests: expected bodies)

_procs = []
_tmpdirs = []

SANITIZER_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"ERROR: LeakSanitizer"),
    re.compile(r"runtime error: "),  # UBSan
    re.compile(r"WARNING: ThreadSanitizer"),
    # valgrind memcheck (tests/e2e/banditd-valgrind): errors and definite/indirect leaks
    re.compile(r"^==\d+== (Invalid (read|write|free)|Mismatched free|Conditional jump"
               r"|Use of uninitialised|Syscall param|Source and destination overlap"
               r"|.* are (definitely|indirectly) lost)", re.M),
]


def timeout_scale():
    """E2E_TIMEOUT_SCALE (default 1): factor applied to the daemon's start and stop
    timeouts, for slow runs (valgrind: see tests/README.md)."""
    try:
        return max(1.0, float(os.environ.get("E2E_TIMEOUT_SCALE", "1")))
    except ValueError:
        return 1.0


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass
    if not os.environ.get("E2E_KEEP"):
        for d in _tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _on_term(signum, frame):
    _cleanup()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_term)


def tmpdir():
    d = tempfile.mkdtemp(prefix="banditd-e2e-")
    _tmpdirs.append(d)
    return d


def raise_nofile(want=None):
    """Raise this process's RLIMIT_NOFILE (children inherit it). Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else want
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def banditd_path():
    p = os.environ.get("BANDITD") or os.path.join(ROOT, "build", "banditd")
    if not os.path.isfile(p) or not os.access(p, os.X_OK):
        raise RuntimeError("banditd binary not found at %s (set BANDITD or run make)" % p)
    return p


def stop_procs(procs, timeout=10.0):
    """SIGTERM each process still running, then SIGKILL it after timeout s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_port_file(path, proc, timeout=10.0, what="process", log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                txt = f.read().strip()
            if txt.isdigit() and int(txt) > 0:
                return int(txt)
        if proc.poll() is not None:
            raise RuntimeError(
                "%s exited with %s before writing its port file%s"
                % (what, proc.returncode, _tail(log))
            )
        time.sleep(0.02)
    raise RuntimeError("%s wrote no port file within %.0fs%s" % (what, timeout, _tail(log)))


def _tail(path, n=2000):
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        data = f.read()
    return "\n--- %s (tail) ---\n%s" % (path, data[-n:].decode("utf-8", "replace"))


# --------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------


class Resp:
    def __init__(self, status, reason, headers, body, t_headers=None, t_end=None, pieces=None):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) as received
        self.body = body
        self.t_headers = t_headers  # seconds from send to status line + headers
        self.t_first = None  # seconds from send to first body bytes (streamed reads)
        self.t_end = t_end
        self.pieces = pieces or []

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        b = self.body[:300]
        return "<Resp %d %r %r>" % (self.status, self.headers, b)


def request(port, method, path, body=None, headers=None, timeout=30.0, host="127.0.0.1"):
    """One request on a fresh connection. body: bytes, str, or a JSON-able object."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    hdrs = {"Connection": "close"}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        t_h = time.monotonic() - t0
        pieces = []
        t_first = None
        while True:
            try:
                chunk = r.read1(65536)
            except http.client.IncompleteRead as e:
                pieces.append(e.partial)
                break
            if not chunk:
                break
            if t_first is None:
                t_first = time.monotonic() - t0
            pieces.append(chunk)
        resp = Resp(
            r.status, r.reason, r.getheaders(), b"".join(pieces), t_h, time.monotonic() - t0, pieces
        )
        resp.t_first = t_first
        return resp
    finally:
        conn.close()


def raw_exchange(port, data, timeout=10.0, host="127.0.0.1"):
    """Send raw bytes, read until the server closes (or timeout). Returns bytes."""
    import socket

    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(data)
        out = []
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            out.append(b)
        return b"".join(out)
    finally:
        s.close()


def parse_sse(body):
    """Split an SSE body into the list of `data:` payloads (str), in order."""
    out = []
    for block in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        lines = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if lines:
            out.append("\n".join(lines))
    return out


def assert_openai_error(resp, status):
    """resp has `status` and a body {"error":{"message","type","param","code"}}."""
    assert resp.status == status, "want status %d, got %r" % (status, resp)
    try:
        obj = resp.json()
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % resp.body[:300])
    assert isinstance(obj, dict) and isinstance(obj.get("error"), dict), (
        "not OpenAI shape: %r" % obj
    )
    e = obj["error"]
    assert isinstance(e.get("message"), str) and e["message"], "error.message: %r" % obj
    assert isinstance(e.get("type"), str) and e["type"], "error.type: %r" % obj
    assert "param" in e, "error.param missing: %r" % obj
    assert "code" in e, "error.code missing: %r" % obj
    assert e["param"] is None or isinstance(e["param"], str), "error.param: %r" % obj
    ct = resp.header("Content-Type") or ""
    assert ct.startswith("application/json"), "error Content-Type %r" % ct
    return e


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


class FakeUpstream:
    def __init__(self, record=True, delay_ms=0, chunk_delay_ms=None, extra_args=()):
        self.dir = tmpdir()
        self.port_file = os.path.join(self.dir, "fake.port")
        self.record_path = os.path.join(self.dir, "fake.requests.jsonl") if record else None
        self.log = os.path.join(self.dir, "fake.log")
        args = [sys.executable, FAKE, "--port", "0", "--port-file", self.port_file]
        if self.record_path:
            args += ["--record", self.record_path]
        if delay_ms:
            args += ["--delay-ms", str(delay_ms)]
        if chunk_delay_ms is not None:
            args += ["--chunk-delay-ms", str(chunk_delay_ms)]
        args += list(extra_args)
        with open(self.log, "wb") as lf:
            self.proc = subprocess.Popen(args, stdout=lf, stderr=subprocess.STDOUT)
        _procs.append(self.proc)
        self.port = wait_port_file(self.port_file, self.proc, what="fake upstream", log=self.log)
        self.base_url = "http://127.0.0.1:%d/v1" % self.port

    def records(self):
        if not self.record_path or not os.path.exists(self.record_path):
            return []
        with open(self.record_path, encoding="utf-8") as f:
            return [json.loads(ln) for ln in f if ln.strip()]

    def chat_records(self):
        return [r for r in self.records() if r["path"].endswith("/chat/completions")]

    def stats(self):
        return request(self.port, "GET", "/_fake/stats").json()

    def stop(self):
        stop_procs([self.proc], timeout=5)


def closed_port():
    """A loopback port with nothing listening (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class RedisServer:
    """A private redis-server on a free loopback port (AOF, fsync always)."""

    def __init__(self):
        self.dir = tmpdir()
        self.port = closed_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _procs.append(self.proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cmd("PING") == "PONG":
                    return self
            except (OSError, RuntimeError):  # not up yet, or LOADING the AOF
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def cmd(self, *args):
        """One command over a fresh connection (RESP2), decoded reply."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(out)
            f = s.makefile("rb")
            return _read_reply(f)


def _read_reply(f):
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError("bad reply %r" % line)


def arm(name, base_url, model, key_env=None, price_in=1.0, price_out=2.0, timeout_ms=10000,
        connect_timeout_ms=2000):
    a = {
        "name": name,
        "base_url": base_url,
        "model": model,
        "price_in_per_mtok": price_in,
        "price_out_per_mtok": price_out,
        "timeout_ms": timeout_ms,
        "connect_timeout_ms": connect_timeout_ms,
    }
    if key_env:
        a["api_key_env"] = key_env
    return a


class Banditd:
    """The real daemon with a temporary config.

    arms: list of arm() dicts; env: extra environment (API keys); limits/router/
    extra: merged into the config. The daemon runs with --listen 127.0.0.1:0 and
    reports its port through --port-file."""

    def __init__(self, arms, env=None, limits=None, router=None, extra=None, log_level="info",
                 nofile=None):
        self.dir = tmpdir()
        self.config_path = os.path.join(self.dir, "banditd.json")
        self.port_file = os.path.join(self.dir, "banditd.port")
        self.stdout_path = os.path.join(self.dir, "banditd.stdout")
        self.stderr_path = os.path.join(self.dir, "banditd.stderr")
        # config.c wants a real port in "listen"; --listen 127.0.0.1:0 overrides it
        cfg = {
            "listen": "127.0.0.1:8080",
            "arms": arms,
            "store": {"path": os.path.join(self.dir, "banditd.db")},
            "log": {"level": log_level},
        }
        if limits:
            cfg["limits"] = limits
        if router:
            cfg["router"] = router
        cfg.update(extra or {})
        self.config = cfg
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env.setdefault("OPENBLAS_NUM_THREADS", "1")
        # Sanitizer reports go to stderr; make them fatal and visible.
        self.env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.responses = []  # every Resp returned by self.request (for leak checks)
        self.nofile = nofile
        self.proc = None
        self.port = None
        self.stopped_rc = None

    def start(self, timeout=15.0):
        timeout *= timeout_scale()
        args = [banditd_path(), "--config", self.config_path, "--listen", "127.0.0.1:0",
                "--port-file", self.port_file]
        pre = None
        if self.nofile:
            n = self.nofile

            def pre():
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))

        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._out, stderr=self._err, env=self.env, cwd=self.dir, preexec_fn=pre
        )
        _procs.append(self.proc)
        self.port = wait_port_file(
            self.port_file, self.proc, timeout, "banditd", log=self.stderr_path
        )
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "banditd exited with %s during start%s"
                    % (self.proc.returncode, _tail(self.stderr_path))
                )
            try:
                r = request(self.port, "GET", "/healthz", timeout=2)
                if r.status == 200:
                    return self
                last = r
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise RuntimeError("banditd /healthz not 200 within %.0fs: %r" % (timeout, last))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def request(self, method, path, body=None, headers=None, timeout=30.0):
        r = request(self.port, method, path, body, headers, timeout)
        self.responses.append(r)
        return r

    def chat(self, body, headers=None, timeout=30.0):
        return self.request("POST", "/v1/chat/completions", body, headers, timeout)

    def log_text(self):
        out = b""
        for p in (self.stdout_path, self.stderr_path):
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out += f.read()
        return out.decode("utf-8", "replace")

    def sanitizer_report(self):
        """The first sanitizer line found in stderr, or None."""
        if not os.path.exists(self.stderr_path):
            return None
        with open(self.stderr_path, "rb") as f:
            txt = f.read().decode("utf-8", "replace")
        for pat in SANITIZER_PATTERNS:
            m = pat.search(txt)
            if m:
                start = txt.rfind("\n", 0, m.start()) + 1
                return txt[start : start + 3000]
        return None

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Stop with `sig`; returns the exit status (negative = killed by a signal)."""
        timeout *= timeout_scale()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.stopped_rc = "timeout"
                return "timeout"
        self.stopped_rc = self.proc.returncode
        for fh in (self._out, self._err):
            fh.close()
        return self.stopped_rc

    def finish(self):
        """Assert the daemon is still alive, exits 0 on SIGTERM, and no sanitizer report."""
        assert self.alive(), "banditd died during the test (exit %s)%s" % (
            self.proc.returncode,
            _tail(self.stderr_path),
        )
        rc = self.stop()
        rep = self.sanitizer_report()
        assert rep is None, "sanitizer report in banditd's stderr:\n" + rep
        assert rc == 0, "banditd exit status on SIGTERM: want 0, got %r%s" % (
            rc,
            _tail(self.stderr_path),
        )

    def threads(self):
        return proc_status(self.pid).get("Threads")


def proc_status(pid):
    """/proc/PID/status as a dict of ints where numeric (kB units dropped)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                k, _, v = ln.partition(":")
                v = v.strip()
                num = v.split()[0] if v else ""
                out[k] = int(num) if num.isdigit() else v
    except OSError:
        pass
    return out


class ProcSampler(threading.Thread):
    """Samples Threads and VmRSS of pid every `period` seconds until stop()."""

    def __init__(self, pid, period=0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.period = period
        self.threads = []
        self.rss_kb = []
        self._stop_ev = threading.Event()

    def run(self):
        while not self._stop_ev.is_set():
            st = proc_status(self.pid)
            if "Threads" in st:
                self.threads.append(st["Threads"])
                self.rss_kb.append(st.get("VmRSS", 0))
            self._stop_ev.wait(self.period)

    def stop(self):
        self._stop_ev.set()
        self.join(5)


# --------------------------------------------------------------------------
# Checks shared by tests
# --------------------------------------------------------------------------

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def check_bandit_headers(resp, arms=None, fallbacks=0):
    """The four X-Bandit-* headers are present and well formed. Returns them as a dict."""
    rid = resp.header("X-Bandit-Request-Id")
    arm_name = resp.header("X-Bandit-Arm")
    cost = resp.header("X-Bandit-Cost-Usd")
    fb = resp.header("X-Bandit-Fallbacks")
    assert rid is not None and HEX32.match(rid), "X-Bandit-Request-Id %r (want 32 hex)" % rid
    assert arm_name, "X-Bandit-Arm missing"
    if arms is not None:
        assert arm_name in arms, "X-Bandit-Arm %r not in %r" % (arm_name, arms)
    assert cost is not None, "X-Bandit-Cost-Usd missing"
    try:
        c = float(cost)
    except ValueError:
        raise AssertionError("X-Bandit-Cost-Usd %r is not a number" % cost)
    assert c >= 0 and c == c and c != float("inf"), "X-Bandit-Cost-Usd %r" % cost
    assert fb is not None and fb.isdigit(), "X-Bandit-Fallbacks %r" % fb
    if fallbacks is not None:
        assert int(fb) == fallbacks, "X-Bandit-Fallbacks %r, want %d" % (fb, fallbacks)
    return {"request_id": rid, "arm": arm_name, "cost": c, "fallbacks": int(fb)}


def expected_cost(user_text, content, arm_cfg):
    u = fake_upstream.usage_for(user_text, content)
    return (
        u["prompt_tokens"] * arm_cfg["price_in_per_mtok"]
        + u["completion_tokens"] * arm_cfg["price_out_per_mtok"]
    ) / 1e6


def close_enough(a, b, rel=1e-3, abs_=1e-12):
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


# --------------------------------------------------------------------------
# Test runner
# --------------------------------------------------------------------------


def run_tests(cases, teardown=None, title=None):
    """cases: list of (name, fn). Runs all, then teardown() (counted as a case when
    given: it asserts the daemon's health). Exits the process: 0 if all passed."""
    passed = failed = 0
    if title:
        print("== " + title, flush=True)
    all_cases = list(cases)
    if teardown is not None:
        all_cases.append(("teardown", teardown))
    for name, fn in all_cases:
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print("FAIL %s (%.2fs): %s: %s" % (name, time.monotonic() - t0, type(e).__name__, e),
                  flush=True)
            traceback.print_exc(limit=4, file=sys.stdout)
        else:
            passed += 1
            print("PASS %s (%.2fs)" % (name, time.monotonic() - t0), flush=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    _cleanup()
    sys.exit(1 if failed else 0)


# --------------------------------------------------------------------------
# Concurrent load (raw sockets, asyncio)
# --------------------------------------------------------------------------


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdrs = {}
    for ln in lines[1:]:
        if ln:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif "content-length" in hdrs:
        body = await reader.readexactly(int(hdrs["content-length"]))
    else:
        body = await reader.read()
    return status, hdrs, body


async def _load(host, port, n, make_request, connect_timeout, timeout, connect_batch):
    results = [None] * n  # (status, latency_s, error)
    conns = [None] * n
    sem = asyncio.Semaphore(connect_batch)

    async def connect(i):
        async with sem:
            try:
                conns[i] = await asyncio.wait_for(
                    asyncio.open_connection(host, port), connect_timeout
                )
            except Exception as e:  # noqa: BLE001
                results[i] = (None, None, "connect: %r" % e)

    t_c0 = time.monotonic()
    await asyncio.gather(*(connect(i) for i in range(n)))
    t_connect = time.monotonic() - t_c0
    start = asyncio.Event()

    async def one(i):
        if conns[i] is None:
            return
        reader, writer = conns[i]
        await start.wait()
        t0 = time.monotonic()
        try:
            writer.write(make_request(i))
            await writer.drain()
            status, hdrs, body = await asyncio.wait_for(_read_response(reader), timeout)
            results[i] = (status, time.monotonic() - t0, None, hdrs, body)
        except Exception as e:  # noqa: BLE001
            results[i] = (None, time.monotonic() - t0, "%s: %r" % (type(e).__name__, e))
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await asyncio.sleep(0)
    t0 = time.monotonic()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    return results, wall, t_connect


def load(port, n, make_request, host="127.0.0.1", connect_timeout=20.0, timeout=60.0,
         connect_batch=500):
    """Open n connections, then send make_request(i) (bytes) on each at once and read one
    response each. Returns (results, wall_s, connect_s); results[i] is
    (status, latency_s, error[, headers, body])."""
    return asyncio.run(
        _load(host, port, n, make_request, connect_timeout, timeout, connect_batch)
    )


def chat_request_bytes(model, text, port=0, extra_headers=None, stream=False):
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    ).encode()
    h = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n"
        % (port, len(body))
    )
    for k, v in (extra_headers or {}).items():
        h += "%s: %s\r\n" % (k, v)
    return h.encode() + b"\r\n" + body


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def cpu_seconds(pid):
    """utime + stime of pid in seconds (from /proc/PID/stat)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _load_phase(d, n, model, arm_name, tag, timeout, stream, fig, prefix):
    texts = ["%s%05d" % (tag, i) for i in range(n)]
    reqs = [chat_request_bytes(arm_name, texts[i], d.port, stream=stream) for i in range(n)]
    cpu0 = cpu_seconds(d.pid)
    results, wall, t_conn = load(d.port, n, lambda i: reqs[i], timeout=timeout)
    fig[prefix + "cpu_s"] = cpu_seconds(d.pid) - cpu0
    fig[prefix + "connect_s"] = t_conn
    fig[prefix + "wall_s"] = wall
    ok = exact = 0
    errors = {}
    lat = []
    want_auth = "Bearer " + DEFAULT_KEYS["E2E_KEY_CHEAP"]
    for i, r in enumerate(results):
        if r is None:
            errors["no result"] = errors.get("no result", 0) + 1
        elif r[0] == 200:
            ok += 1
            lat.append(r[1])
            if stream or r[4] == fake_upstream.echo_body(model, want_auth, texts[i]):
                exact += 1
        else:
            key = "status %s %s" % (r[0], (r[2] or "")[:80])
            errors[key] = errors.get(key, 0) + 1
    lat.sort()
    fig[prefix + "ok"] = ok
    fig[prefix + "byte_exact"] = exact
    fig[prefix + "errors"] = errors
    fig[prefix + "p50_s"] = percentile(lat, 50)
    fig[prefix + "p99_s"] = percentile(lat, 99)
    fig[prefix + "max_s"] = lat[-1] if lat else float("nan")


def concurrency_run(n, slow_ms=2000, timeout=60.0, stream=False, barrier=True):
    """Start a fake upstream and banditd, warm up, then
    1. send n requests at once over n connections to arm "slow" (upstream answers
       after slow_ms) while sampling banditd's threads and RSS: figures without prefix;
    2. if barrier: n requests at once to arm "barrier", whose upstream answers only
       once all n are waiting at the same time (so success proves n calls in flight
       together, whatever the machine's speed): figures prefixed "barrier_".
    Returns a dict of figures; the processes are stopped (banditd checked with
    finish(): alive, exit 0 on SIGTERM, no sanitizer report) before returning."""
    nofile = max(2 * n + 1024, 4096)
    raise_nofile(nofile)
    fake = FakeUpstream(record=False)
    key = "E2E_KEY_CHEAP"
    slow_model = "slow:%d" % slow_ms
    barrier_model = "barrier:%d:%d" % (n, int(timeout * 1000 / 2))
    d = Banditd(
        [
            arm("slow", fake.base_url, slow_model, key, timeout_ms=slow_ms + 60000),
            arm("barrier", fake.base_url, barrier_model, key, timeout_ms=int(timeout * 1000)),
            arm("warm", fake.base_url, "fake-warm", key),
        ],
        env=DEFAULT_KEYS,
        limits={"max_connections": n + 1000, "max_inflight": n + 1000,
                "connection_timeout_s": 120},
        log_level="warn",
        nofile=nofile,
    )
    d.start()
    fig = {"requests": n, "slow_ms": slow_ms}
    try:
        # warm-up through the whole path, so lazily created threads already exist
        for i in range(3):
            w = request(d.port, "POST", "/v1/chat/completions",
                        {"model": "warm", "messages": [{"role": "user", "content": "w%d" % i}]})
            assert w.status == 200, "warm-up request: %r" % w
        time.sleep(0.2)
        fig["threads_before"] = d.threads()
        fig["rss_before_kb"] = proc_status(d.pid).get("VmRSS")
        sampler = ProcSampler(d.pid)
        sampler.start()
        try:
            _load_phase(d, n, slow_model, "slow", "s", timeout, stream, fig, "")
            if barrier:
                _load_phase(d, n, barrier_model, "barrier", "b", timeout, stream, fig,
                            "barrier_")
        finally:
            sampler.stop()
        time.sleep(0.3)
        fig["threads_after"] = d.threads()
        st = proc_status(d.pid)
        fig["rss_after_kb"] = st.get("VmRSS")
        fig["rss_peak_kb"] = st.get("VmHWM")
        fig["threads_during_min"] = min(sampler.threads) if sampler.threads else None
        fig["threads_during_max"] = max(sampler.threads) if sampler.threads else None
        fig["rss_sampled_max_kb"] = max(sampler.rss_kb) if sampler.rss_kb else None
        fig["samples"] = len(sampler.threads)
        up = fake.stats()
        fig["upstream_max_inflight"] = up["max_inflight"]
        fig["upstream_max_connections"] = up["max_connections"]
        fig["alive"] = d.alive()
    finally:
        try:
            d.finish()
            fig["clean_exit"] = True
        except AssertionError as e:
            fig["clean_exit"] = False
            fig["exit_problem"] = str(e)[:2000]
        fake.stop()
    return fig


def format_figures(fig):
    nan = float("nan")
    g = fig.get
    lines = [
        "requests            %d at once (upstream answers after %d ms)" % (g("requests"),
                                                                          g("slow_ms")),
        "successes           %s (byte-exact %s)" % (g("ok"), g("byte_exact")),
        "errors              %s" % (g("errors") or "none"),
        "connect all         %.2f s" % g("connect_s", nan),
        "wall time           %.2f s (banditd CPU %.2f s)" % (g("wall_s", nan), g("cpu_s", nan)),
        "latency p50/p99/max %.3f / %.3f / %.3f s" % (g("p50_s", nan), g("p99_s", nan),
                                                      g("max_s", nan)),
    ]
    if "barrier_ok" in fig:
        lines += [
            "barrier run         %s ok of %d all held in flight at once, errors %s"
            % (g("barrier_ok"), g("requests"), g("barrier_errors") or "none"),
            "barrier wall        %.2f s (banditd CPU %.2f s), p50/p99 %.3f / %.3f s"
            % (g("barrier_wall_s", nan), g("barrier_cpu_s", nan), g("barrier_p50_s", nan),
               g("barrier_p99_s", nan)),
        ]
    lines += [
        "threads before/during(min..max)/after  %s / %s..%s / %s (%s samples)"
        % (g("threads_before"), g("threads_during_min"), g("threads_during_max"),
           g("threads_after"), g("samples")),
        "RSS before/after/peak (VmHWM)  %s / %s / %s kB" % (g("rss_before_kb"),
                                                           g("rss_after_kb"), g("rss_peak_kb")),
        "upstream max in flight / connections  %s / %s" % (g("upstream_max_inflight"),
                                                          g("upstream_max_connections")),
        "banditd clean exit  %s %s" % (g("clean_exit"), g("exit_problem", "")),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line: run a command against a live daemon
# --------------------------------------------------------------------------

DEFAULT_KEYS = {"E2E_KEY_CHEAP": "sk-e2e-cheap-0123456789", "E2E_KEY_STRONG": "sk-e2e-strong-9876"}


def default_arms(fake):
    return [
        arm("cheap", fake.base_url, "fake-cheap-1", "E2E_KEY_CHEAP", 0.5, 1.5),
        arm("strong", fake.base_url, "fake-strong-1", "E2E_KEY_STRONG", 5.0, 15.0),
    ]


def _with_daemon(cmd):
    fake = FakeUpstream()
    d = Banditd(default_arms(fake), env=DEFAULT_KEYS)
    d.start()
    env = dict(os.environ)
    env.update(
        {
            "E2E_BASE_URL": "http://127.0.0.1:%d" % d.port,
            "E2E_PORT": str(d.port),
            "E2E_RECORD": fake.record_path or "",
        }
    )
    try:
        rc = subprocess.call(cmd, env=env)
    finally:
        ok = True
        try:
            d.finish()
        except AssertionError as e:
            print("FAIL daemon: %s" % e, flush=True)
            ok = False
        fake.stop()
        secrets = list(DEFAULT_KEYS.values())
        log = d.log_text()
        for s in secrets:
            if s in log:
                print("FAIL daemon: an arm API key appears in banditd's log", flush=True)
                ok = False
    return rc if ok else (rc or 1)


def main(argv):
    if len(argv) >= 2 and argv[0] == "with-daemon":
        cmd = argv[1:]
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print("usage: e2elib.py with-daemon -- CMD ARGS...", file=sys.stderr)
            return 2
        rc = _with_daemon(cmd)
        _cleanup()
        return rc
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
