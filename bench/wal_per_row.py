#!/usr/bin/env python3
"""WAL bytes written per decision row, random vs time-ordered request ids.

A model of the store's decisions table (the schema of docs/state.md, an
850-byte features blob as the bench request's dictionary form, 140 rows per
commit as at ~7k decisions/s with the 20 ms linger): after PRE rows, 50
commits are made with checkpoints off and the WAL's size is divided by the
rows. Random ids put every insert on a random leaf of the id index; ids with
a time prefix (decisions_new_id) append at its right edge.
   usage: bench/wal_per_row.py [PRE=100000]"""
import os
import random
import sqlite3
import sys
import tempfile


def run(mode, pre, path):
    for sfx in ("", "-wal", "-shm"):
        if os.path.exists(path + sfx):
            os.unlink(path + sfx)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE decisions(id TEXT PRIMARY KEY, completion_id TEXT,"
               " arm_name TEXT NOT NULL, x BLOB NOT NULL, w_q REAL, w_c REAL, w_l REAL,"
               " created_s REAL, cost_usd REAL, latency_ms REAL, client INTEGER)")
    db.execute("CREATE INDEX decisions_created ON decisions(created_s)")
    blob = os.urandom(850)
    clock = [1.7e9]

    def rid():
        if mode == "random":
            return "%032x" % random.getrandbits(128)
        return "%012x%020x" % (int(clock[0] * 1e3), random.getrandbits(80))

    def commit(n):
        db.execute("BEGIN")
        for _ in range(n):
            clock[0] += 1 / 7000
            db.execute("INSERT INTO decisions VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                       (rid(), "chatcmpl-%030x" % random.getrandbits(120), "arm0", blob,
                        0.5, 0.3, 0.2, clock[0], 1e-4, 12.5, 0))
        db.execute("COMMIT")

    for _ in range(pre // 140):
        commit(140)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA wal_autocheckpoint=0")
    commits = 50
    for _ in range(commits):
        commit(140)
    per_row = os.path.getsize(path + "-wal") / (commits * 140)
    db.close()
    return per_row


def main():
    pre = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    random.seed(1)
    with tempfile.TemporaryDirectory() as d:
        for mode in ("random", "time-ordered"):
            b = run(mode, pre, os.path.join(d, "wal.db"))
            print("%-12s ids, %d rows before: %6.0f WAL bytes per row (%.2f pages)"
                  % (mode, pre, b, b / 4096))


if __name__ == "__main__":
    main()
