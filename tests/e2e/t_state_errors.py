#!/usr/bin/env python3
"""End-to-end: durable-state error cases (issue 5, acceptance 4).

- a garbage file at store.path: exit non-zero, a message naming the file, the
  file byte for byte untouched; the same for an SQLite database that is not
  banditd's;
- a database made for another dim: exit non-zero, the message names both
  dims; --reset-state then starts fresh explicitly;
- the same for another router.text_weight (recorded in the database's meta
  table): exit non-zero, both values in the log, the file untouched;
  --reset-state starts fresh with the new value;
- full disk: the daemon's file-size limit (RLIMIT_FSIZE, set on the running
  process with prlimit; SIGXFSZ ignored) is lowered to just above the
  database's current size: feedback answers 503 (never a false 200), nothing
  half-written; once the limit is lifted the same daemon recovers, every
  acknowledged feedback is in the database and PRAGMA integrity_check is ok.
"""

import hashlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402

fake = L.FakeUpstream(record=False)
ARMS = L.default_arms(fake)


def run_once(db, dim=16, extra_args=(), router=None):
    """Start banditd on db expecting it to refuse: returns (exit status, stderr)."""
    d = L.Banditd(ARMS, env=L.DEFAULT_KEYS, router=dict({"dim": dim}, **(router or {})),
                  extra={"store": {"path": db}})
    args = [L.banditd_path(), "--config", d.config_path, "--listen", "127.0.0.1:0",
            "--port-file", d.port_file] + list(extra_args)
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, env=d.env)
    return p.returncode, p.stderr


def run_reset(db, router, path):
    """Start banditd on db with --reset-state, GET path, stop it (exit 0): the response."""
    d = L.Banditd(ARMS, env=L.DEFAULT_KEYS, router=router, extra={"store": {"path": db}})
    args = [L.banditd_path(), "--config", d.config_path, "--listen", "127.0.0.1:0",
            "--port-file", d.port_file, "--reset-state"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=d.env)
    try:
        port = L.wait_port_file(d.port_file, p, what="banditd --reset-state")
        r = L.request(port, "GET", path)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    return r


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def t_garbage_file():
    db = os.path.join(L.tmpdir(), "garbage.db")
    with open(db, "wb") as f:
        f.write(os.urandom(3000) + b"this is not a database")
    h = sha(db)
    rc, err = run_once(db)
    assert rc != 0, "started on a garbage file"
    assert db in err and ("not a" in err or "corrupt" in err), err
    assert "--reset-state" in err, err
    assert sha(db) == h, "the garbage file was modified"
    assert not os.path.exists(db + "-wal"), "a WAL was created next to it"


def t_foreign_sqlite():
    db = os.path.join(L.tmpdir(), "foreign.db")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users(name TEXT)")
    con.execute("INSERT INTO users VALUES('alice')")
    con.commit()
    con.close()
    h = sha(db)
    rc, err = run_once(db)
    assert rc != 0 and "not a banditd database" in err, (rc, err)
    assert sha(db) == h


def t_dim_mismatch_and_reset():
    db = os.path.join(L.tmpdir(), "dim.db")
    d = L.Banditd(ARMS, env=L.DEFAULT_KEYS, router={"dim": 16}, extra={"store": {"path": db}})
    d.start()
    d.finish()
    h = sha(db)
    rc, err = run_once(db, dim=32)
    assert rc != 0, "started with the wrong dim"
    assert "dim=16" in err and "dim=32" in err, err
    assert sha(db) == h
    # explicit reset: starts fresh for dim 32
    r = run_reset(db, {"dim": 32}, "/debug/model?arm=cheap")
    assert r.status == 200 and r.json()["dim"] == 32, r
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='dim'").fetchone()[0] == "32"
    con.close()


def t_text_weight_mismatch_and_reset():
    db = os.path.join(L.tmpdir(), "tw.db")
    d = L.Banditd(ARMS, env=L.DEFAULT_KEYS, router={"dim": 16}, extra={"store": {"path": db}})
    d.start()  # default text_weight 0.5
    d.finish()
    h = sha(db)
    rc, err = run_once(db, router={"text_weight": 1.0})
    assert rc != 0, "started with another text_weight"
    assert "store has text_weight=0.5, config says text_weight=1; use --reset-state" in err, err
    assert sha(db) == h, "the database was modified"
    # explicit reset: starts fresh with the new value
    r = run_reset(db, {"dim": 16, "text_weight": 1.0}, "/healthz")
    assert r.status == 200, r
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='text_weight'").fetchone()[0] == "1"
    con.close()


def t_full_disk():
    if not hasattr(resource, "prlimit"):
        print("SKIP full disk: resource.prlimit not available")
        return
    dir_ = L.tmpdir()
    db = os.path.join(dir_, "full.db")
    d = L.Banditd(ARMS, env=L.DEFAULT_KEYS, router={"dim": 256},
                  extra={"store": {"path": db}}, log_level="warn")
    d.start()  # banditd ignores SIGXFSZ: an over-limit write fails with EFBIG
    acked = []
    rids = []
    for i in range(20):
        r = d.chat({"model": "cheap", "messages": [{"role": "user", "content": "warm %d" % i}]})
        assert r.status == 200
        rids.append(r.header("X-Bandit-Request-Id"))
    for rid in rids[:10]:
        r = d.request("POST", "/feedback", {"request_id": rid, "reward": 1})
        assert r.status == 200, r
        acked.append(rid)
    size = max(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    limit = size + 8192
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (limit, hard))
    statuses = []
    pending = []
    for i in range(300):
        r = d.chat({"model": "cheap", "messages": [{"role": "user", "content": "full %d" % i}]})
        assert r.status == 200, r  # routing keeps working without the disk
        rid = r.header("X-Bandit-Request-Id")
        f = d.request("POST", "/feedback", {"request_id": rid, "reward": 0})
        statuses.append(f.status)
        if f.status == 200:
            acked.append(rid)
        else:
            assert f.status in (500, 503), f
            assert f.status != 503 or f.header("Retry-After"), f
            pending.append(rid)
    failed = [s for s in statuses if s != 200]
    assert failed, "the file-size limit never hit (statuses: %r)" % statuses[:20]
    print("full disk: %d feedback answered 200, %d refused (%s)"
          % (statuses.count(200), len(failed), sorted(set(failed))))
    # space comes back: the same daemon recovers, a refused feedback can be retried
    resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (soft, hard))
    ok = 0
    for rid in pending[:10] + rids[10:15]:
        f = d.request("POST", "/feedback", {"request_id": rid, "reward": 1})
        assert f.status == 200, f
        acked.append(rid)
        ok += 1
    d.finish()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        have = {r[0] for r in con.execute("SELECT request_id FROM feedback")}
        dup = con.execute("SELECT count(*) - count(DISTINCT request_id) FROM feedback").fetchone()
    finally:
        con.close()
    assert dup[0] == 0
    missing = [r for r in acked if r not in have]
    assert not missing, "acknowledged feedback missing after the full disk: %r" % missing[:3]


L.run_tests([("garbage_file", t_garbage_file), ("foreign_sqlite", t_foreign_sqlite),
             ("dim_mismatch_and_reset", t_dim_mismatch_and_reset),
             ("text_weight_mismatch_and_reset", t_text_weight_mismatch_and_reset),
             ("full_disk", t_full_disk)],
            teardown=fake.stop, title="t_state_errors")
