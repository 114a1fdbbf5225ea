#!/usr/bin/env python3
"""t_reload — live reconfiguration under continuous load.

A client thread sends requests the whole time (plain and streamed, auto and
pinned), plus slow requests that are in flight across each reload. Checked:
- SIGHUP with an added arm ("fresh", listed FIRST so every index shifts) and a
  changed price: zero failed requests; "fresh" then gets traffic (pinned);
  /stats shows the new price; the learned model of the surviving arms is
  unchanged (X-Bandit-Scores mean/width for a fixed prompt, feedback counts,
  mean reward); feedback on a decision made before the reload still trains the
  right arm (by name) after the renumbering;
- an invalid config (bad JSON, then a changed router.dim) on SIGHUP is rejected
  with an error log line and nothing changes;
- POST /admin/reload (loopback) removes an arm: it answers 404 afterwards,
  and its pending decision answers 410."""

import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

S = {}
PROMPT = [{"role": "user", "content": "the fixed probe prompt about reloading"}]


def write_config(cfg):
    tmp = S["d"].config_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.replace(tmp, S["d"].config_path)


def scores():
    r = S["d"].chat({"model": "auto", "messages": PROMPT}, headers={"X-Bandit-Debug": "1"})
    assert r.status == 200, r
    out = {}
    for part in r.header("X-Bandit-Scores").split(";"):
        name, vals = part.split(":", 1)
        mean, width = vals.split("/")[:2]
        out[name] = (float(mean), float(width))
    return out


def stats():
    r = S["d"].request("GET", "/stats")
    assert r.status == 200, r
    return {a["name"]: a for a in r.json()["arms"]}


def wait_log(pattern, since, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        txt = S["d"].log_text()[since:]
        # Only complete lines count: the daemon may be half-way through
        # writing the one that matches.
        done = txt[:txt.rfind("\n") + 1]
        if pattern in done:
            return done
        time.sleep(0.05)
    raise AssertionError("log line %r not seen; tail:\n%s" % (pattern, S["d"].log_text()[-2000:]))


class Load(threading.Thread):
    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_ev = threading.Event()
        self.ok = 0
        self.failures = []
        self.arms = {}

    def run(self):
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            models = ["auto", "a", "b"] + (["fresh"] if S.get("fresh_live") else [])
            body = {"model": models[i % len(models)],
                    "messages": [{"role": "user", "content": "load %d" % i}]}
            if i % 4 == 0:
                body["stream"] = True
                body["messages"][0]["content"] = "@fake stream:3:20 load %d" % i
            elif i % 7 == 0:
                body["messages"][0]["content"] = "@fake slow:300 load %d" % i
            try:
                r = E.request(self.port, "POST", "/v1/chat/completions", body, timeout=20)
                good = r.status == 200 and (not body.get("stream") or
                                            E.parse_sse(r.body)[-1:] == ["[DONE]"])
            except OSError as e:
                r, good = e, False
            if good:
                self.ok += 1
                a = r.header("X-Bandit-Arm")
                self.arms[a] = self.arms.get(a, 0) + 1
            elif not (body["model"] == "fresh" and getattr(r, "status", 0) == 404
                      and not S.get("fresh_live")):
                self.failures.append((body["model"], repr(r)[:300]))


def setup():
    S["up"] = E.FakeUpstream(record=False)
    base = S["up"].base_url
    S["arms"] = [E.arm("a", base, "echo", price_in=1.0, price_out=2.0),
                 E.arm("b", base, "echo-b", price_in=3.0, price_out=4.0)]
    S["d"] = E.Banditd(S["arms"], router={"dim": 64}).start()
    S["cfg"] = json.loads(json.dumps(S["d"].config))
    # Learned state: pulls and feedback on both arms.
    ids = {}
    for i in range(6):
        for arm in ("a", "b"):
            r = S["d"].chat({"model": arm, "messages": [{"role": "user", "content": "w%d" % i}]})
            assert r.status == 200, r
            rid = r.header("X-Bandit-Request-Id")
            if i < 4:
                f = S["d"].request("POST", "/feedback",
                                   {"request_id": rid, "reward": 0.9 if arm == "a" else 0.2})
                assert f.status == 200, f
            else:
                ids.setdefault(arm, []).append(rid)
    S["pending"] = ids  # decisions without feedback yet


def sighup_adds_arm_and_changes_price():
    d = S["d"]
    before_scores, before_stats = scores(), stats()
    load = Load(d.port)
    load.start()
    time.sleep(1.0)
    cfg = json.loads(json.dumps(S["cfg"]))
    fresh = E.arm("fresh", S["up"].base_url, "echo-fresh", price_in=0.01, price_out=0.02)
    fresh["prior_quality"] = 1.0
    cfg["arms"] = [fresh] + cfg["arms"]  # every old index shifts by one
    cfg["arms"][1]["price_in_per_mtok"] = 9.0  # arm "a"
    write_config(cfg)
    # Requests in flight across the reload (slow answers and slow streams).
    spanning = []

    def slow(i):
        body = {"model": "b" if i % 2 else "auto",
                "messages": [{"role": "user", "content": "@fake %s span %d" % (
                    "slow:800" if i % 3 else "stream:6:150", i)}]}
        if i % 3 == 0:
            body["stream"] = True
        spanning.append(E.request(d.port, "POST", "/v1/chat/completions", body, timeout=20))

    ths = [threading.Thread(target=slow, args=(i,)) for i in range(6)]
    for t in ths:
        t.start()
    time.sleep(0.3)
    since = len(d.log_text())
    os.kill(d.pid, signal.SIGHUP)
    wait_log('"msg":"config reloaded"', since)
    for t in ths:
        t.join(30)
    assert len(spanning) == 6 and all(r.status == 200 for r in spanning), spanning
    for r in spanning:
        if r.header("Content-Type").startswith("text/event-stream"):
            assert E.parse_sse(r.body)[-1] == "[DONE]", r.body[-300:]
    S["fresh_live"] = True
    time.sleep(1.5)
    load.stop_ev.set()
    load.join(30)
    assert not load.failures, "failed requests during reload: %r" % load.failures[:5]
    assert load.ok > 10, load.ok
    assert load.arms.get("fresh", 0) > 0, load.arms
    r = d.chat({"model": "fresh", "messages": PROMPT})
    assert r.status == 200 and r.header("X-Bandit-Arm") == "fresh", r
    after_scores, after_stats = scores(), stats()
    assert after_stats["a"]["price_in_per_mtok"] == 9.0, after_stats["a"]
    assert after_stats["b"]["price_in_per_mtok"] == 3.0, after_stats["b"]
    for arm in ("a", "b"):
        assert after_scores[arm] == before_scores[arm], (arm, before_scores, after_scores)
        for k in ("feedback", "mean_reward"):
            assert after_stats[arm][k] == before_stats[arm][k], (arm, k, before_stats, after_stats)
        assert after_stats[arm]["pulls"] >= before_stats[arm]["pulls"]
    assert after_stats["fresh"]["feedback"] == 0
    # Feedback on a decision made before the renumbering trains "b" (by name).
    f = d.request("POST", "/feedback", {"request_id": S["pending"]["b"][0], "reward": 0.0})
    assert f.status == 200, f
    st = stats()
    assert st["b"]["feedback"] == before_stats["b"]["feedback"] + 1, st
    assert st["a"]["feedback"] == before_stats["a"]["feedback"], st
    assert st["fresh"]["feedback"] == 0, st
    S["cfg"] = cfg


def invalid_config_rejected():
    d = S["d"]
    before_scores, before_stats = scores(), stats()
    for bad, needle in (("{ not json", "config not reloaded"),
                        (dict(S["cfg"], router={"dim": 128}), "router.dim changed")):
        with open(d.config_path, "w") as f:
            f.write(bad if isinstance(bad, str) else json.dumps(bad))
        since = len(d.log_text())
        os.kill(d.pid, signal.SIGHUP)
        txt = wait_log(needle, since)
        line = [ln for ln in txt.splitlines() if needle in ln][0]
        obj = json.loads(line)
        assert obj["level"] == "error", obj
        assert d.alive()
        after_stats = stats()
        assert list(after_stats) == list(before_stats), (before_stats, after_stats)
        for arm in after_stats:
            for k in ("price_in_per_mtok", "price_out_per_mtok", "feedback", "mean_reward"):
                assert after_stats[arm][k] == before_stats[arm][k], (arm, k)
        assert scores() == before_scores
        r = d.chat({"model": "fresh", "messages": PROMPT})
        assert r.status == 200, r
    write_config(S["cfg"])


def admin_reload_removes_arm():
    d = S["d"]
    r = d.chat({"model": "fresh", "messages": PROMPT})
    assert r.status == 200, r
    rid = r.header("X-Bandit-Request-Id")
    before = stats()
    cfg = json.loads(json.dumps(S["cfg"]))
    cfg["arms"] = [a for a in cfg["arms"] if a["name"] != "fresh"]
    write_config(cfg)
    r = d.request("POST", "/admin/reload")
    assert r.status == 200, r
    r = d.chat({"model": "fresh", "messages": PROMPT})
    E.assert_openai_error(r, 404)
    after = stats()
    assert sorted(after) == ["a", "b"], after
    for arm in ("a", "b"):
        assert after[arm]["feedback"] == before[arm]["feedback"]
    f = d.request("POST", "/feedback", {"request_id": rid, "reward": 1})
    assert f.status == 410, f
    r = d.request("GET", "/admin/reload")
    assert r.status == 405, r


def teardown():
    S["d"].finish()


if __name__ == "__main__":
    E.run_tests([("setup", setup),
                 ("sighup_adds_arm_and_changes_price", sighup_adds_arm_and_changes_price),
                 ("invalid_config_rejected", invalid_config_rejected),
                 ("admin_reload_removes_arm", admin_reload_removes_arm)],
                teardown=teardown, title="t_reload")
