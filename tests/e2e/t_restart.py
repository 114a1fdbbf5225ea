#!/usr/bin/env python3
"""End-to-end: durable state across clean restarts (docs/state.md).

1. exact: with store.snapshot_every = 1 every arm is snapshotted right after
   each feedback, so the model read before SIGTERM is a snapshot state; after
   a restart on the same database θ, A⁻¹, A and b of every arm are equal bit
   for bit (compared as the exact 17-significant-digit numbers of
   GET /debug/model).
2. default snapshot policy: the exit snapshot re-derives A⁻¹ by Cholesky, so
   after a restart A and b are equal bit for bit and θ, A⁻¹ agree within
   1e-12 relative (max |Δ| / max |value|) with what was served before SIGTERM.
3. feedback for decisions made before a restart is accepted after it (200),
   feedback repeated after a restart is 409, never applied twice; the model
   after the restart includes exactly the new feedback.
4. arms removed from the config keep their rows (the arm is restored when it
   comes back); an added arm starts fresh.
5. `banditd export --format jsonl` dumps the decisions and the feedback log.
"""

import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402

DIM = 16
fake = L.FakeUpstream(record=False)
KEYS = L.DEFAULT_KEYS


def arms(names):
    out = []
    for n in names:
        out.append(L.arm(n, fake.base_url, "fake-%s" % n, "E2E_KEY_CHEAP", 1.0, 2.0))
    return out


def daemon(db, names=("cheap", "strong", "mid"), store=None):
    st = {"path": db}
    st.update(store or {})
    d = L.Banditd(arms(names), env=KEYS, router={"dim": DIM}, extra={"store": st},
                  log_level="warn")
    return d.start()


def model(d, arm):
    r = d.request("GET", "/debug/model?arm=%s" % arm)
    assert r.status == 200, r
    return r.json()


def chat(d, model_name, text):
    r = d.chat({"model": model_name, "messages": [{"role": "user", "content": text}]})
    assert r.status == 200, r
    return r.header("X-Bandit-Request-Id")


def feedback(d, rid, reward):
    return d.request("POST", "/feedback", {"request_id": rid, "reward": reward})


def traffic(d, rng, n, names, tag):
    """n requests spread over the arms; returns [(id, arm)]."""
    out = []
    for i in range(n):
        a = names[i % len(names)]
        out.append((chat(d, a, "%s %d %s" % (tag, i, "w" * rng.randrange(1, 40))), a))
    return out


def settle(d):
    # a few cheap requests drive loop iterations (one snapshot per iteration)
    for _ in range(12):
        d.request("GET", "/healthz")


def rel_diff(a, b):
    scale = max(max(abs(v) for v in a), 1e-300)
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def exact_case():
    db = os.path.join(L.tmpdir(), "exact.db")
    rng = random.Random(5)
    names = ["cheap", "strong", "mid"]
    d = daemon(db, store={"snapshot_every": 1})
    done = traffic(d, rng, 45, names, "exact")
    given = done[:30]
    pending = done[30:]
    for rid, _ in given:
        r = feedback(d, rid, rng.choice([0, 0.25, 0.5, 1, True, False]))
        assert r.status == 200, r
    settle(d)
    before = {a: model(d, a) for a in names}
    assert sum(before[a]["n"] for a in names) == 30
    d.finish()

    d2 = daemon(db, store={"snapshot_every": 1})
    after = {a: model(d2, a) for a in names}
    for a in names:
        for k in ("theta", "Ainv", "A", "b", "n", "feedback"):
            assert before[a][k] == after[a][k], "arm %s: %s differs after a clean restart" % (a, k)
    # feedback for decisions made before the restart is accepted after it
    for rid, _ in pending:
        r = feedback(d2, rid, 1)
        assert r.status == 200, r
    # and a repeated one is refused, not applied twice
    for rid, _ in given[:5] + pending[:3]:
        r = feedback(d2, rid, 1)
        assert r.status == 409, r
    settle(d2)
    after2 = {a: model(d2, a) for a in names}
    assert sum(after2[a]["n"] for a in names) == 45
    d2.finish()
    return db


def default_case():
    db = os.path.join(L.tmpdir(), "default.db")
    rng = random.Random(7)
    names = ["cheap", "strong", "mid"]
    d = daemon(db)
    done = traffic(d, rng, 60, names, "default")
    for rid, _ in done[:50]:
        assert feedback(d, rid, rng.random()).status == 200
    # a batch, too: every item is persisted before the answer
    batch = {"feedback": [{"request_id": rid, "reward": 0.5} for rid, _ in done[50:55]]}
    r = d.request("POST", "/feedback", batch)
    assert r.status == 200 and r.json()["applied"] == 5, r
    before = {a: model(d, a) for a in names}
    d.finish()
    d2 = daemon(db)
    worst = 0.0
    for a in names:
        after = model(d2, a)
        assert after["A"] == before[a]["A"] and after["b"] == before[a]["b"], a
        assert after["n"] == before[a]["n"] and after["feedback"] == before[a]["feedback"], a
        for k in ("theta", "Ainv"):
            rd = rel_diff(before[a][k], after[k])
            worst = max(worst, rd)
            assert rd <= 1e-12, "arm %s %s: relative difference %g > 1e-12" % (a, k, rd)
    print("default policy: worst relative difference of theta/Ainv after restart: %.3g" % worst)
    d2.finish()


def arms_change_case(db):
    # 'mid' removed, 'fresh' added: fresh starts cold, mid's rows stay
    d = daemon(db, names=("cheap", "strong", "fresh"))
    f = model(d, "fresh")
    assert f["n"] == 0 and f["feedback"] == 0
    ident = [1.0 if i == j else 0.0 for i in range(DIM) for j in range(DIM)]
    assert f["A"] == ident, "a new arm starts from lambda*I"
    cheap = model(d, "cheap")
    d.finish()
    d2 = daemon(db)  # mid comes back
    mid = model(d2, "mid")
    assert mid["n"] > 0, "a removed arm's state was kept in the store"
    assert model(d2, "cheap")["A"] == cheap["A"]
    d2.finish()


def export_case(db):
    out = subprocess.run([L.banditd_path(), "export", "--format", "jsonl", "--db", db],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[0]["type"] == "meta" and lines[0]["dim"] == DIM
    dec = [x for x in lines if x["type"] == "decision"]
    fb = [x for x in lines if x["type"] == "feedback"]
    assert len(dec) >= 45 and len(fb) == 45, (len(dec), len(fb))
    assert len({x["request_id"] for x in fb}) == len(fb)
    assert all(len(x["x"]) == DIM for x in fb)
    seqs = [x["seq"] for x in fb]
    assert seqs == sorted(seqs)
    bad = subprocess.run([L.banditd_path(), "export", "--format", "csv", "--db", db],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "jsonl" in bad.stderr


state = {}


def t_exact():
    state["db"] = exact_case()


def t_default_policy():
    default_case()


def t_arms_change():
    arms_change_case(state["db"])


def t_export():
    export_case(state["db"])


L.run_tests(
    [("restart_exact_and_pending_feedback", t_exact), ("restart_default_policy", t_default_policy),
     ("arms_removed_and_added", t_arms_change), ("export_jsonl", t_export)],
    teardown=fake.stop, title="t_restart")
