#!/usr/bin/env python3
"""Send N chat requests (the ~1 KB body of bench/chat.lua) over one kept-alive
connection, one after another; exit 1 unless all answer 200. Used by
bench/profile.sh to drive a fixed number of requests through banditd.
   usage: send_n.py PORT N"""
import http.client
import json
import re
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))


def chat_body():
    """The body wrk sends (bench/chat.lua), decoded from its Lua string."""
    src = open(os.path.join(here, "chat.lua")).read()
    parts = re.findall(r"'((?:[^'\\]|\\.)*)'", src.split("wrk.body =", 1)[1])
    return "".join(parts).replace("\\\\", "\\").encode()


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    body = chat_body()
    json.loads(body)  # must be valid JSON
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    bad = 0
    for _ in range(n):
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        bad += r.status != 200
    c.close()
    print("sent %d, non-200 %d, body %d bytes" % (n, bad, len(body)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
