#!/usr/bin/env python3
"""A configurable fake OpenAI-compatible upstream for banditd's end-to-end tests.

Python 3 stdlib only. One asyncio event loop, raw HTTP/1.1 with keep-alive, so
it holds thousands of concurrent connections without a thread per connection.

    python3 fake_upstream.py --port 0 --port-file F [--record FILE] [--delay-ms MS]

POST .../chat/completions picks a behaviour, first match wins:
  1. the request header `X-Fake-Behavior: <spec>`;
  2. a first message content starting with "@fake <spec>" (the spec is the next word);
  3. the request's `model` (banditd rewrites it to the arm's upstream model, so an
     arm whose config says "model": "slow:2000" makes every call to it slow).
Specs:
  echo (and any unknown name)  200 chat.completion; content names the received model,
                               a fingerprint of the Authorization header and the
                               user's last message; includes `usage`
  slow:MS                      like echo, answered after MS milliseconds
  stream[:N[:MS]]              SSE: role chunk, N content deltas (default 4), a finish
                               chunk, a usage chunk when stream_options.include_usage,
                               then [DONE] (chunked transfer encoding); MS between
                               events (default --chunk-delay-ms, 10)
  barrier:N[:MS]               like echo, but each request waits until N barrier:N
                               requests are waiting at once (proof that a proxy
                               holds N calls in flight); 504 after MS (default 30000)
  status:CODE                  CODE with an OpenAI-shaped error body (429/503 also
                               send Retry-After: 1)
  hang                         never answers (until the client goes away)
  cut                          streams two SSE events, then closes the socket abruptly
  big:N                        200 with a valid chat.completion of exactly N bytes
  reset                        closes the connection without answering
POST /_control {"default_behavior": SPEC|null, "models": {MODEL: SPEC|null}} overrides
the behaviour of later chat requests (all, or those for MODEL); answers the state.
GET .../models answers a model list; GET /_fake/stats answers counters
({"requests","inflight","max_inflight","connections","max_connections"}).
Anything else: 404 in OpenAI shape.

The response bytes are a pure function of (model, authorization, user text,
include_usage), so a test can import this module and compute exactly what the
upstream sent: echo_body(), stream_events(), big_body(), error_body().
The fingerprint keeps secrets out of response bodies: it is
sha256(authorization header value)[:16], see auth_fingerprint().
--record FILE appends one JSON line per received request:
{"method","path","headers":{lower-case name: value},"body": text}.
"""

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import sys

CREATED = 1700000000
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------
# Deterministic bodies (importable by tests)
# --------------------------------------------------------------------------


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def auth_fingerprint(authorization):
    """sha256 of the Authorization header value, first 16 hex digits ('none' if absent)."""
    if authorization is None:
        return "none"
    return hashlib.sha256(authorization.encode("utf-8")).hexdigest()[:16]


def completion_id(model, user_text):
    h = hashlib.sha256(("%s\0%s" % (model, user_text)).encode("utf-8")).hexdigest()
    return "chatcmpl-fake" + h[:20]


def usage_for(user_text, content):
    """Token counts the fake reports: ceil(chars / 4), at least 1."""
    pt = max(1, (len(user_text) + 3) // 4)
    ct = max(1, (len(content) + 3) // 4)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def echo_content(model, authorization, user_text):
    return "echo model=%s auth=%s user=%s" % (model, auth_fingerprint(authorization), user_text)


def _completion(model, user_text, content):
    return {
        "id": completion_id(model, user_text),
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage_for(user_text, content),
    }


def echo_body(model, authorization, user_text):
    """Exact bytes of the echo (and slow:MS) answer."""
    return _dumps(_completion(model, user_text, echo_content(model, authorization, user_text)))


def big_body(model, user_text, n):
    """A valid chat.completion of exactly n bytes (or the smallest one if n is too small)."""
    base = _completion(model, user_text, "")
    base["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    empty = len(_dumps(base))
    pad = max(0, n - empty)
    base["choices"][0]["message"]["content"] = "x" * pad
    return _dumps(base)


def stream_deltas(user_text, n):
    """The content deltas of a stream: n pieces."""
    return ["part%d(%s) " % (i, user_text[:16]) for i in range(n)]


def stream_events(model, user_text, include_usage, n=4):
    """The list of SSE events (bytes, each ending in a blank line) of stream[:N]."""
    cid = completion_id(model, user_text)

    def chunk(delta, finish=None, usage_null=include_usage):
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage_null:
            obj["usage"] = None
        return b"data: " + _dumps(obj) + b"\n\n"

    deltas = stream_deltas(user_text, n)
    events = [chunk({"role": "assistant", "content": ""})]
    for d in deltas:
        events.append(chunk({"content": d}))
    events.append(chunk({}, "stop"))
    if include_usage:
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": usage_for(user_text, "".join(deltas)),
        }
        events.append(b"data: " + _dumps(obj) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def cut_events(model, user_text):
    """The two events the `cut` behaviour sends before closing the socket."""
    return stream_events(model, user_text, False, 4)[:2]


def error_body(status):
    kinds = {
        400: ("invalid_request_error", "bad_request"),
        401: ("authentication_error", "invalid_api_key"),
        404: ("invalid_request_error", "not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }
    etype, code = kinds.get(status, ("server_error", "upstream_error"))
    return _dumps(
        {
            "error": {
                "message": "fake upstream error %d" % status,
                "type": etype,
                "param": None,
                "code": code,
            }
        }
    )


def user_text_of(req):
    """Text of the last user message ('' if none or not a string)."""
    msgs = req.get("messages") if isinstance(req, dict) else None
    if not isinstance(msgs, list):
        return ""
    for m in reversed(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return "".join(
                    p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"
                )
            return ""
    return ""


def behaviour_of(req, headers):
    """(name, argument) for a request."""
    spec = headers.get("x-fake-behavior")
    if not spec and isinstance(req, dict):
        msgs = req.get("messages")
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict):
            c = msgs[0].get("content")
            if isinstance(c, str) and c.startswith("@fake "):
                parts = c.split()
                if len(parts) > 1:
                    spec = parts[1]
    if not spec and isinstance(req, dict) and isinstance(req.get("model"), str):
        spec = req["model"]
    spec = spec or "echo"
    name, _, arg = spec.partition(":")
    return name, arg


REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class Stats:
    def __init__(self):
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.connections = 0
        self.max_connections = 0

    def as_json(self):
        return _dumps(self.__dict__)


class FakeUpstream:
    def __init__(self, delay_ms=0, record=None, chunk_delay_ms=10):
        self.delay_ms = delay_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.record_path = record
        self.record_fh = open(record, "a", encoding="utf-8") if record else None
        self.stats = Stats()
        self.barriers = {}  # n -> [waiting, asyncio.Event]
        # POST /_control overrides (added for the circuit-breaker tests):
        # "default_behavior" replaces the behaviour of every chat request,
        # "models" {model: spec} that of requests for one model; null clears.
        self.default_override = None
        self.model_overrides = {}

    def record(self, method, path, headers, body):
        if not self.record_fh:
            return
        line = {
            "method": method,
            "path": path,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }
        self.record_fh.write(json.dumps(line) + "\n")
        self.record_fh.flush()

    async def handle(self, reader, writer):
        st = self.stats
        st.connections += 1
        st.max_connections = max(st.max_connections, st.connections)
        try:
            while True:
                keep = await self.one_request(reader, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:
            pass
        finally:
            st.connections -= 1
            try:
                writer.close()
            except Exception:
                pass

    async def read_head(self, reader):
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            raise ValueError("header too large")
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ", 2)
        headers = {}
        for ln in lines[1:]:
            if not ln:
                continue
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        return method, path, version, headers

    async def read_body(self, reader, writer, headers):
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            total = 0
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until the blank line
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise ValueError("body too large")
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            return b"".join(parts)
        n = int(headers.get("content-length", "0") or 0)
        if n > MAX_BODY_BYTES:
            raise ValueError("body too large")
        return await reader.readexactly(n) if n else b""

    def send(self, writer, status, body, ctype="application/json", extra=None, keep=True):
        hdr = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        hdr.append("Content-Type: " + ctype)
        hdr.append("Content-Length: %d" % len(body))
        for k, v in (extra or {}).items():
            hdr.append("%s: %s" % (k, v))
        if not keep:
            hdr.append("Connection: close")
        writer.write(("\r\n".join(hdr) + "\r\n\r\n").encode("latin-1") + body)

    async def one_request(self, reader, writer):
        """Serve one request; returns True to keep the connection open."""
        method, path, version, headers = await self.read_head(reader)
        body = await self.read_body(reader, writer, headers)
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        self.stats.requests += 1
        self.record(method, path, headers, body)
        route = path.split("?", 1)[0]

        if route == "/_control" and method == "POST":
            try:
                ctl = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(ctl, dict):
                    raise ValueError("not an object")
                if "default_behavior" in ctl:
                    self.default_override = ctl["default_behavior"] or None
                for m, spec in (ctl.get("models") or {}).items():
                    if spec:
                        self.model_overrides[m] = spec
                    else:
                        self.model_overrides.pop(m, None)
            except (UnicodeDecodeError, ValueError, AttributeError):
                self.send(writer, 400, error_body(400), keep=keep)
                await writer.drain()
                return keep
            state = {"default_behavior": self.default_override, "models": self.model_overrides}
            self.send(writer, 200, _dumps(state), keep=keep)
            await writer.drain()
            return keep
        if route == "/_fake/stats" and method == "GET":
            self.send(writer, 200, self.stats.as_json(), keep=keep)
            await writer.drain()
            return keep
        if route.endswith("/models") and method == "GET":
            self.send(writer, 200, _dumps({"object": "list", "data": []}), keep=keep)
            await writer.drain()
            return keep
        if not route.endswith("/chat/completions") or method != "POST":
            self.send(writer, 404, error_body(404), keep=keep)
            await writer.drain()
            return keep

        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            req = None
        if not isinstance(req, dict):
            self.send(writer, 400, error_body(400), keep=keep)
            await writer.drain()
            return keep

        st = self.stats
        st.inflight += 1
        st.max_inflight = max(st.max_inflight, st.inflight)
        try:
            return await self.chat(req, headers, reader, writer, keep)
        finally:
            st.inflight -= 1

    async def chat(self, req, headers, reader, writer, keep):
        name, arg = behaviour_of(req, headers)
        model = req.get("model") if isinstance(req.get("model"), str) else ""
        override = self.model_overrides.get(model) or self.default_override
        if override:
            name, _, arg = override.partition(":")
        auth = headers.get("authorization")
        text = user_text_of(req)
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000.0)

        if name == "hang":
            # Never answer; wait until the peer closes the connection.
            while await reader.read(65536):
                pass
            return False
        if name == "reset":
            writer.transport.abort()
            return False
        if name == "barrier":
            # hold until `n` barrier requests are waiting at once, then answer all
            n_s, _, t_s = arg.partition(":")
            n = int(n_s or "1")
            b = self.barriers.get(n)
            if b is None or b[1].is_set():
                b = [0, asyncio.Event()]
                self.barriers[n] = b
            b[0] += 1
            if b[0] >= n:
                b[1].set()
            try:
                await asyncio.wait_for(b[1].wait(), int(t_s or "30000") / 1000.0)
            except asyncio.TimeoutError:
                b[0] -= 1
                self.send(writer, 504, error_body(504), keep=keep)
                await writer.drain()
                return keep
            name = "echo"
        if name == "slow":
            await asyncio.sleep(int(arg or "1000") / 1000.0)
            name = "echo"
        if name == "status":
            code = int(arg or "500")
            extra = {"Retry-After": "1"} if code in (429, 503) else None
            self.send(writer, code, error_body(code), extra=extra, keep=keep)
            await writer.drain()
            return keep
        if name == "big":
            self.send(writer, 200, big_body(model, text, int(arg or "1048576")), keep=keep)
            await writer.drain()
            return keep
        if name in ("stream", "cut"):
            so = req.get("stream_options")
            include_usage = isinstance(so, dict) and so.get("include_usage") is True
            delay_ms = self.chunk_delay_ms
            if name == "cut":
                events = cut_events(model, text)
            else:
                n_s, _, d_s = arg.partition(":")
                events = stream_events(model, text, include_usage, int(n_s or "4"))
                if d_s:
                    delay_ms = int(d_s)
            hdr = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
            )
            if not keep:
                hdr += "Connection: close\r\n"
            writer.write((hdr + "\r\n").encode("latin-1"))
            for ev in events:
                writer.write(b"%x\r\n" % len(ev) + ev + b"\r\n")
                await writer.drain()
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000.0)
            if name == "cut":
                writer.transport.abort()
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return keep
        # echo and anything unknown
        self.send(writer, 200, echo_body(model, auth, text), keep=keep)
        await writer.drain()
        return keep


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def serve(args):
    fake = FakeUpstream(args.delay_ms, args.record, args.chunk_delay_ms)
    server = await asyncio.start_server(
        fake.handle, args.host, args.port, backlog=args.backlog, limit=MAX_HEADER_BYTES * 2
    )
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the bound port here")
    ap.add_argument("--delay-ms", type=int, default=0, help="delay before every chat answer")
    ap.add_argument("--chunk-delay-ms", type=int, default=10, help="delay between SSE events")
    ap.add_argument("--record", help="append each request as a JSON line to this file")
    ap.add_argument("--backlog", type=int, default=4096)
    args = ap.parse_args(argv)
    raise_nofile()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
