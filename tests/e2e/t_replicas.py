#!/usr/bin/env python3
"""End-to-end: three banditd replicas learning as one through Redis
(issue 8, docs/scale-out.md). Starts its own redis-server on a free loopback
port (appendonly yes, appendfsync always) in a temporary directory; skips,
saying so, when redis-server is not installed.

1. converge: requests spread round-robin over 3 replicas, each feedback sent
   to a *different* replica than the one that answered; afterwards every
   replica holds the same A and b bit for bit, θ equal within 1e-9, and equal
   (1e-9) to a single-process recomputation from the feedback events in the
   Redis stream (decoded and solved here, in Python).
2. kill -9 one replica mid-run: every feedback that got 200 is in the stream
   and in the survivors' models; a fresh replica started later (snapshot +
   tail of the stream) reaches the same statistics.
   A replica configured with another router.text_weight than the one
   recorded in Redis refuses to start, naming both values.
3. Redis stopped mid-run: requests are still routed (200), feedback answers
   503; after Redis restarts the refused feedback is accepted and all
   replicas converge again.
"""

import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402

DIM = 16
NAMES = ["cheap", "mid", "strong"]
MU0 = 1.0
LAMBDA = 1.0
fake = L.FakeUpstream(record=False)
KEYS = L.DEFAULT_KEYS


Redis = L.RedisServer


def decode_x(blob):
    if blob[:1] == b"D":
        return list(struct.unpack("<%dd" % DIM, blob[1:]))
    assert blob[:1] == b"S" and (len(blob) - 1) % 12 == 0, blob[:1]
    x = [0.0] * DIM
    for off in range(1, len(blob), 12):
        i, v = struct.unpack("<Id", blob[off:off + 12])
        x[i] = v
    return x


class Auditor:
    """Reads the stream like a replica and registers its position in
    {banditd}:replicas (docs/scale-out.md: trimming never passes a live
    replica), so that it sees every event although the replicas snapshot
    and trim every second."""

    def __init__(self, redis):
        self.redis = redis
        self.pos = "0-0"
        self.events = []
        self.heartbeat()

    def heartbeat(self):
        sec, usec = self.redis.cmd("TIME")
        ms = int(sec) * 1000 + int(usec) // 1000
        self.redis.cmd("HSET", "{banditd}:replicas", "e2e-auditor", "%s %d" % (self.pos, ms))

    def poll(self):
        """[(request_id, arm, x, reward)] in stream order, every event so far."""
        while True:
            self.heartbeat()
            batch = self.redis.cmd("XRANGE", "{banditd}:feedback", "(" + self.pos, "+",
                                   "COUNT", "500")
            if not batch:
                return self.events
            for sid, fields in batch:
                f = dict(zip(fields[::2], fields[1::2]))
                self.events.append((f[b"r"].decode(), f[b"a"].decode(), decode_x(f[b"x"]),
                                    float(f[b"v"])))
                self.pos = sid.decode()


def recompute(events):
    """A = λI + Σ x xᵀ, b = Σ (r − μ0) x per arm, θ = A⁻¹ b (Gaussian elimination)."""
    res = {}
    for arm in NAMES:
        A = [[LAMBDA if i == j else 0.0 for j in range(DIM)] for i in range(DIM)]
        b = [0.0] * DIM
        for _rid, a, x, r in events:
            if a != arm:
                continue
            for i in range(DIM):
                b[i] += (r - MU0) * x[i]
                for j in range(DIM):
                    A[i][j] += x[i] * x[j]
        M = [row[:] + [b[i]] for i, row in enumerate(A)]
        for c in range(DIM):
            p = max(range(c, DIM), key=lambda k: abs(M[k][c]))
            M[c], M[p] = M[p], M[c]
            for k in range(DIM):
                if k != c:
                    f = M[k][c] / M[c][c]
                    for j in range(c, DIM + 1):
                        M[k][j] -= f * M[c][j]
        res[arm] = [M[i][DIM] / M[i][i] for i in range(DIM)]
    return res


# -------------------------------------------------------------- replicas ----

def replica(redis):
    arms = [L.arm(n, fake.base_url, "fake-%s" % n, "E2E_KEY_CHEAP", 1.0, 2.0) for n in NAMES]
    d = L.Banditd(arms, env=KEYS, router={"dim": DIM},
                  extra={"store": {"redis": redis.url(), "snapshot_interval_s": 1}},
                  log_level="info")
    return d.start()


def replica_id(d):
    m = re.search(r'"shared state \(redis\) loaded".*?"replica":"([^"]+)"', d.log_text())
    assert m, "no start-up line with the replica id"
    return m.group(1)


def chat(d, arm, text):
    r = d.chat({"model": arm, "messages": [{"role": "user", "content": text}]})
    assert r.status == 200, r
    return r.header("X-Bandit-Request-Id")


def feedback(d, rid, reward):
    return d.request("POST", "/feedback", {"request_id": rid, "reward": reward})


def models(d):
    out = {}
    for a in NAMES:
        r = d.request("GET", "/debug/model?arm=%s" % a)
        assert r.status == 200, r
        out[a] = r.json()
    return out


def wait_applied(ds, n, timeout=30.0):
    """Until every replica's models hold n updates in total."""
    deadline = time.monotonic() + timeout
    while True:
        got = [sum(m["n"] for m in models(d).values()) for d in ds]
        if all(g == n for g in got):
            return
        if time.monotonic() > deadline:
            raise AssertionError("replicas applied %r updates, want %d each" % (got, n))
        time.sleep(0.1)


def rel(a, b):
    scale = max(max(abs(v) for v in b), 1e-300)
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def assert_converged(ds, auditor, acked):
    events = auditor.poll()
    ids = [e[0] for e in events]
    assert len(ids) == len(set(ids)), "a request id appears twice in the stream"
    missing = set(acked) - set(ids)
    assert not missing, "%d acknowledged feedbacks are not in the stream" % len(missing)
    wait_applied(ds, len(events))
    ref = recompute(events)
    ms = [models(d) for d in ds]
    for a in NAMES:
        for k in range(1, len(ms)):
            assert ms[k][a]["A"] == ms[0][a]["A"], "arm %s: A differs between replicas" % a
            assert ms[k][a]["b"] == ms[0][a]["b"], "arm %s: b differs between replicas" % a
            assert rel(ms[k][a]["theta"], ms[0][a]["theta"]) <= 1e-9, "arm %s: θ differs" % a
        worst = rel(ms[0][a]["theta"], ref[a])
        assert worst <= 1e-9, "arm %s: θ vs single-process recomputation: %.3g" % (a, worst)
    return len(events)


# ------------------------------------------------------------------ cases ----

STATE = {}


def case_converge():
    redis = Redis().start()
    audit = Auditor(redis)
    ds = [replica(redis) for _ in range(3)]
    STATE.update(redis=redis, audit=audit, ds=ds, acked=[], rng=random.Random(3))
    rng = STATE["rng"]
    for i in range(60):
        k = i % 3
        rid = chat(ds[k], NAMES[rng.randrange(3)], "conv %d %s" % (i, "w" * rng.randrange(1, 30)))
        r = feedback(ds[(k + 1) % 3], rid, rng.choice([0, 0.25, 0.5, 1, True, False]))
        assert r.status == 200, r
        STATE["acked"].append(rid)
    # a repeated feedback on a third replica is refused, not applied twice
    r = feedback(ds[2], STATE["acked"][0], 1)
    assert r.status == 409, r
    n = assert_converged(ds, STATE["audit"], STATE["acked"])
    assert n == 60, n


def case_text_weight_refused():
    """The first replica recorded router.text_weight in meta; a replica
    configured with another one refuses to start (its features would not
    match the shared models) and leaves the record alone."""
    redis = STATE["redis"]
    assert redis.cmd("HGET", "{banditd}:meta", "text_weight") == b"0.5"
    arms = [L.arm(n, fake.base_url, "fake-%s" % n, "E2E_KEY_CHEAP", 1.0, 2.0) for n in NAMES]
    d = L.Banditd(arms, env=KEYS, router={"dim": DIM, "text_weight": 1.0},
                  extra={"store": {"redis": redis.url()}})
    p = subprocess.run([L.banditd_path(), "--config", d.config_path, "--listen", "127.0.0.1:0",
                        "--port-file", d.port_file], capture_output=True, text=True,
                       timeout=60, env=d.env)
    want = "store has text_weight=0.5, config says text_weight=1"
    assert p.returncode != 0 and want in p.stderr, (p.returncode, p.stderr)
    assert redis.cmd("HGET", "{banditd}:meta", "text_weight") == b"0.5"


def case_kill9():
    redis, ds, rng = STATE["redis"], STATE["ds"], STATE["rng"]
    pending = []
    for i in range(30):
        alive = [d for d in ds if d.alive()]
        k = i % len(alive)
        rid = chat(alive[k], NAMES[rng.randrange(3)], "kill %d" % i)
        pending.append((rid, alive[(k + 1) % len(alive)]))
        if i == 15:
            STATE["dead_id"] = replica_id(ds[1])
            ds[1].stop(signal.SIGKILL)
    time.sleep(0.3)  # the survivors' fire-and-forget decision writes land
    for rid, d in pending:
        if not d.alive():
            d = ds[0]
        r = feedback(d, rid, rng.random())
        # a decision of the killed replica may not have reached Redis: 404
        assert r.status in (200, 404), r
        if r.status == 200:
            STATE["acked"].append(rid)
    survivors = [ds[0], ds[2]]
    n = assert_converged(survivors, STATE["audit"], STATE["acked"])
    assert n >= len(STATE["acked"])
    # A dead replica holds trimming back for replica_stale_s (60 s) unless the
    # operator removes it, as here.
    assert redis.cmd("HDEL", "{banditd}:replicas", STATE["dead_id"]) == 1
    # wait until the replicas' snapshots let them trim the stream (every 1 s):
    # the fresh replica then cannot rebuild from the stream alone, it must
    # load the snapshots and replay the tail
    deadline = time.monotonic() + 15
    while int(redis.cmd("XLEN", "{banditd}:feedback")) >= n:
        assert time.monotonic() < deadline, "the stream was never trimmed"
        STATE["audit"].heartbeat()
        time.sleep(0.2)
    fresh = replica(redis)
    ds[1] = fresh
    assert_converged(survivors + [fresh], STATE["audit"], STATE["acked"])


def case_redis_down():
    redis, ds, rng = STATE["redis"], STATE["ds"], STATE["rng"]
    before = [(chat(ds[i % 3], NAMES[i % 3], "down-before %d" % i), i % 3) for i in range(6)]
    time.sleep(0.3)
    redis.kill()
    refused = []
    for rid, k in before:
        r = feedback(ds[(k + 1) % 3], rid, 1)
        assert r.status == 503, r
        assert r.header("Retry-After"), r
        refused.append((rid, (k + 1) % 3))
    during = []
    for i in range(6):  # routing goes on
        during.append((chat(ds[i % 3], NAMES[i % 3], "down-during %d" % i), i % 3))
    for rid, k in during[:2]:
        r = feedback(ds[k], rid, 0.5)
        assert r.status == 503, r
    redis.start()
    # refused feedback is accepted once the replicas reconnect (back-off <= 2 s)
    deadline = time.monotonic() + 20
    todo = refused + [(rid, k) for rid, k in during]  # during: only the answering replica knows them
    while todo:
        rid, k = todo[0]
        r = feedback(ds[k], rid, 0.75)
        if r.status == 200:
            STATE["acked"].append(rid)
            todo.pop(0)
            continue
        assert r.status == 503 and time.monotonic() < deadline, r
        time.sleep(0.2)
    assert_converged(ds, STATE["audit"], STATE["acked"])


def teardown():
    for d in STATE.get("ds", []):
        d.finish()
    fake.stop()


if __name__ == "__main__":
    if shutil.which("redis-server") is None:
        print("SKIP t_replicas: redis-server not installed")
        sys.exit(0)
    L.run_tests([("converge", case_converge), ("text_weight_refused", case_text_weight_refused),
                 ("kill9", case_kill9),
                 ("redis_down", case_redis_down)], teardown=teardown,
                title="t_replicas: 3 replicas through Redis")
