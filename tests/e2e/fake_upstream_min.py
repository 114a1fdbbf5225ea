#!/usr/bin/env python3
"""fake_upstream_min — a tiny OpenAI-compatible upstream for banditd's smoke test.

    python3 fake_upstream_min.py --port-file P [--dump-dir D]

Listens on 127.0.0.1 (a free port, written to P). POST .../chat/completions
answers a fixed completion that echoes the model it received and the
Authorization header it got (under "echo"), with usage. With "stream": true it
answers SSE chunks (chunked transfer encoding) ending in "data: [DONE]".
Every answer body is also written to D/<completion id> (when --dump-dir is
given) so a test can check that banditd relays it byte for byte.

Behaviour switches, found in the last message's content:
  __status_NNN__     answer HTTP NNN with an OpenAI error body
  __sleep_MS__       sleep MS milliseconds before answering
  __big_stream_N__   stream N content chunks of 1000 characters each
  __slow_stream__    stream 30 chunks 100 ms apart
  __die_mid_stream__ send two chunks, then drop the connection
"""

import argparse
import itertools
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_counter = itertools.count(1)
_lock = threading.Lock()
DUMP_DIR = None


def _next_id():
    with _lock:
        return "chatcmpl-fake-%d-%d" % (os.getpid(), next(_counter))


def _dump(cid, body):
    """Write the dump whole (tmp + rename): a reader never sees a partial one."""
    if DUMP_DIR:
        path = os.path.join(DUMP_DIR, cid)
        with open(path + ".tmp", "wb") as f:
            f.write(body)
        os.rename(path + ".tmp", path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if not self.path.endswith("/chat/completions"):
            self._send(404, b'{"error":{"message":"no such path","type":"invalid_request_error"}}')
            return
        try:
            req = json.loads(raw)
        except ValueError:
            self._send(400, b'{"error":{"message":"bad json","type":"invalid_request_error"}}')
            return
        msgs = req.get("messages") or [{}]
        content = msgs[-1].get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content)
        m = re.search(r"__sleep_(\d+)__", content)
        if m:
            time.sleep(int(m.group(1)) / 1000.0)
        m = re.search(r"__status_(\d{3})__", content)
        if m:
            body = json.dumps({"error": {"message": "fake failure", "type": "server_error",
                                         "param": None, "code": "fake"}}).encode()
            self._send(int(m.group(1)), body)
            return
        echo = {"model": req.get("model"), "authorization": self.headers.get("Authorization"),
                "accept": self.headers.get("Accept"),
                "include_usage": (req.get("stream_options") or {}).get("include_usage")}
        cid = _next_id()
        if req.get("stream"):
            self._stream(req, content, cid, echo)
            return
        obj = {"id": cid, "object": "chat.completion", "created": 1700000000,
               "model": req.get("model"),
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Hello from the fake!"}}],
               "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
               "echo": echo}
        # Unusual spacing on purpose: a re-serialising proxy would change it.
        body = (json.dumps(obj, indent=1) + "\n").encode()
        _dump(cid, body)
        self._send(200, body)

    def _stream(self, req, content, cid, echo):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pieces = ["Hel", "lo ", "stream", "!"]
        delay = 0.0
        m = re.search(r"__big_stream_(\d+)__", content)
        if m:
            pieces = ["x" * 1000] * int(m.group(1))
        if "__slow_stream__" in content:
            pieces = ["tick "] * 30
            delay = 0.1
        die = "__die_mid_stream__" in content
        sent = []

        def event(obj):
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            sent.append(data)
            self._chunk(data)

        try:
            for i, p in enumerate(pieces):
                event({"id": cid, "object": "chat.completion.chunk", "model": req.get("model"),
                       "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}],
                       **({"echo": echo} if i == 0 else {})})
                if die and i == 1:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if delay:
                    time.sleep(delay)
            event({"id": cid, "object": "chat.completion.chunk", "model": req.get("model"),
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (req.get("stream_options") or {}).get("include_usage"):
                event({"id": cid, "object": "chat.completion.chunk", "model": req.get("model"),
                       "choices": [],
                       "usage": {"prompt_tokens": 12, "completion_tokens": len(pieces),
                                 "total_tokens": 12 + len(pieces)}})
            done = b"data: [DONE]\n\n"
            sent.append(done)
            # dump before the last bytes go out: once the client has the
            # whole stream, the dump is there to compare with
            _dump(cid, b"".join(sent))
            self._chunk(done)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Server(ThreadingHTTPServer):
    # the default listen backlog (5) overflows when a test opens tens of
    # connections at once; the retried connects then miss connect timeouts
    request_queue_size = 256


def main():
    global DUMP_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--dump-dir")
    a = ap.parse_args()
    DUMP_DIR = a.dump_dir
    srv = Server(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
