#!/usr/bin/env python3
"""t_logs — the JSON log.

With an upstream API key in the environment and a log file from the config:
every line of the log file parses as a JSON object with time, level and msg;
each chat request has an access line carrying its X-Bandit-Request-Id, arm,
status, latency, cost and preference; the key and the prompt text appear
nowhere (log file, stdout, stderr). log.level = warn drops the access lines.
With log.debug_bodies and level debug the prompt is logged (the key still
never is)."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

KEY = "sk-logtest-5e1d0c9b7a3f4e2d"
MARK = "prompt-marker-7f3a91"
S = {}


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return [ln for ln in f.read().splitlines() if ln.strip()]


def run(level="info", debug_bodies=False):
    d_dir = E.tmpdir()
    log_path = os.path.join(d_dir, "banditd.log")
    logcfg = {"level": level, "file": log_path}
    if debug_bodies:
        logcfg["debug_bodies"] = True
    d = E.Banditd([E.arm("k", S["up"].base_url, "echo", key_env="LOGTEST_KEY")],
                  env={"LOGTEST_KEY": KEY}, extra={"log": logcfg}).start()
    ids = []
    r = d.chat({"model": "k", "messages": [{"role": "user", "content": MARK + " one"}]},
               headers={"X-Bandit-Preference": "quality=0.5,cost=0.25,latency=0.25"})
    assert r.status == 200, r
    ids.append(r.header("X-Bandit-Request-Id"))
    r = d.chat({"model": "auto", "stream": True,
                "messages": [{"role": "user", "content": "@fake stream " + MARK}]})
    assert r.status == 200, r
    ids.append(r.header("X-Bandit-Request-Id"))
    d.chat({"model": "nope", "messages": [{"role": "user", "content": MARK}]})
    d.request("POST", "/feedback", {"request_id": ids[0], "reward": 1})
    d.request("POST", "/v1/chat/completions", "{bad json " + MARK)
    d.request("GET", "/metrics")
    d.finish()
    return d, log_path, ids


def setup():
    S["up"] = E.FakeUpstream(record=False)


def every_line_is_json_with_request_ids():
    d, log_path, ids = run()
    lines = lines_of(log_path)
    assert len(lines) >= 6, lines
    objs = []
    for ln in lines:
        o = json.loads(ln)  # raises on a non-JSON line
        assert isinstance(o, dict), ln
        for k in ("time", "level", "msg"):
            assert k in o, (k, ln)
        assert o["level"] in ("debug", "info", "warn", "error"), ln
        objs.append(o)
    access = [o for o in objs if o["msg"] == "request" and o.get("path") == "/v1/chat/completions"]
    by_id = {o.get("request_id"): o for o in access}
    for rid in ids:
        assert rid in by_id, (rid, access)
        o = by_id[rid]
        assert o["status"] == 200 and o["arm"] == "k", o
        for k in ("latency_ms", "cost_usd", "preference", "stream"):
            assert k in o, (k, o)
    p = by_id[ids[0]]["preference"]
    assert (p["quality"], p["cost"], p["latency"]) == (0.5, 0.25, 0.25), p
    assert by_id[ids[1]]["stream"] is True
    statuses = sorted(o["status"] for o in access)
    assert statuses == [200, 200, 400, 404], statuses
    everything = open(log_path).read() + d.log_text()
    assert KEY not in everything, "API key leaked into the logs"
    assert MARK not in everything, "prompt text leaked into the logs"


def level_warn_drops_access_lines():
    d, log_path, ids = run(level="warn")
    for ln in lines_of(log_path):
        o = json.loads(ln)
        assert o["level"] in ("warn", "error"), ln


def debug_bodies_logs_prompts_not_keys():
    d, log_path, ids = run(level="debug", debug_bodies=True)
    objs = [json.loads(ln) for ln in lines_of(log_path)]
    bodies = [o for o in objs if o["msg"] == "request body"]
    assert bodies and any(MARK in o["body"] for o in bodies), bodies
    assert all(o["level"] == "debug" for o in bodies)
    assert KEY not in open(log_path).read() + d.log_text()


if __name__ == "__main__":
    E.run_tests([("setup", setup),
                 ("every_line_is_json_with_request_ids", every_line_is_json_with_request_ids),
                 ("level_warn_drops_access_lines", level_warn_drops_access_lines),
                 ("debug_bodies_logs_prompts_not_keys", debug_bodies_logs_prompts_not_keys)],
                title="t_logs")
