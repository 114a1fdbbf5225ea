#!/usr/bin/env python3
"""End-to-end test: `banditd export --format jsonl` and `banditd replay
--warmup-export` (issue 5: "replay can warm-start from such an export").

1. A daemon with a durable store (router dim 16) answers chat requests on
   both arms; most get a feedback (one twice: 409). While it runs,
   `banditd export` dumps the database.
2. The dump: one meta line first (dim 16, schema 3), every line parses, every
   chat request id is a decision line, every feedback answered 200 is a
   feedback line exactly once with its reward and arm, its x has 16 finite
   numbers and equals its decision's x (features are stored once and joined).
3. `banditd replay` on a tiny dataset (models "cheap" and "m-strong") with
   --warmup-export: exit 0, and the JSON report counts every feedback row as
   applied (arm "cheap" by name, arm "strong" through --warmup-map). Without
   the map the "strong" rows are counted as skipped. An export of another
   dim (the default config's 256) is refused with a message naming the dims,
   and so is a file that is not an export. The meta line carries
   router.text_weight; a replay config with another one is refused with a
   message naming both, and an export without it (older banditd) is accepted.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402

DIM = 16


def write_dataset(path):
    rows = []
    for i in range(12):
        prompt = "question %d: %s" % (i, "what is %d + %d?" % (i, i * 3) if i % 2 else
                                      "write a haiku about the number %d" % i)
        rows.append({
            "id": "r%d" % i, "prompt": prompt, "source": "tiny",
            "outcomes": {
                "cheap": {"quality": 0.5 if i % 3 else 0.0, "prompt_tokens": 10,
                          "completion_tokens": 20, "cost_usd": 0.00001},
                "m-strong": {"quality": 1.0 if i % 4 else 0.5, "prompt_tokens": 10,
                             "completion_tokens": 30, "cost_usd": 0.001},
            }})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def run(args, timeout=120):
    return subprocess.run([L.banditd_path()] + args, capture_output=True, text=True,
                          timeout=timeout)


def main():
    tmp = L.tmpdir()
    fake = L.FakeUpstream(record=False)
    d = L.Banditd(L.default_arms(fake), env=L.DEFAULT_KEYS, router={"dim": DIM},
                  log_level="warn")
    d.start()
    db = d.config["store"]["path"]
    chats, acked = [], {}
    try:
        for i in range(24):
            model = ("cheap", "strong", "auto")[i % 3]
            r = d.chat({"model": model, "messages": [
                {"role": "user", "content": "export test %d %s" % (i, "x" * i)}]})
            assert r.status == 200, r
            rid = r.header("X-Bandit-Request-Id")
            arm = r.header("X-Bandit-Arm")
            assert rid and arm in ("cheap", "strong"), (rid, arm)
            chats.append((rid, arm))
        for i, (rid, arm) in enumerate(chats):
            if i % 4 == 3:
                continue  # left without feedback: a decision line only
            reward = round(0.1 * (i % 11), 3)
            f = d.request("POST", "/feedback", {"request_id": rid, "reward": reward})
            assert f.status == 200, f
            acked[rid] = (reward, arm)
        dup = d.request("POST", "/feedback", {"request_id": chats[0][0], "reward": 1.0})
        assert dup.status == 409, dup
        dump = os.path.join(tmp, "export.jsonl")
        p = run(["export", "--format", "jsonl", "--db", db, "--output", dump])
        assert p.returncode == 0, "export failed: %s" % p.stderr
    finally:
        if d.alive():
            d.finish()
        fake.stop()

    # ---- the dump ----
    with open(dump) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert lines and lines[0]["type"] == "meta", lines[:1]
    assert lines[0]["dim"] == DIM and lines[0]["schema_version"] == 3, lines[0]
    assert lines[0]["text_weight"] == 0.5, lines[0]  # router.text_weight (default)
    decisions = {o["id"]: o for o in lines if o["type"] == "decision"}
    feedback = [o for o in lines if o["type"] == "feedback"]
    assert {o["type"] for o in lines} <= {"meta", "decision", "feedback"}
    missing = [rid for rid, _ in chats if rid not in decisions]
    assert not missing, "decisions missing from the export: %s" % missing[:3]
    seen = {}
    for o in feedback:
        assert o["request_id"] not in seen, "feedback twice: %s" % o["request_id"]
        seen[o["request_id"]] = o
    assert set(seen) == set(acked), (sorted(set(acked) - set(seen)),
                                     sorted(set(seen) - set(acked)))
    seqs = [o["seq"] for o in feedback]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for rid, (reward, arm) in acked.items():
        o = seen[rid]
        assert o["reward"] == reward and o["arm"] == arm, (o, reward, arm)
        assert len(o["x"]) == DIM and all(isinstance(v, (int, float)) for v in o["x"]), o["x"]
        assert o["x"] == decisions[rid]["x"], "feedback x differs from its decision's x"
        assert decisions[rid]["arm"] == arm
    n_cheap = sum(1 for r, a in acked.values() if a == "cheap")
    n_strong = len(acked) - n_cheap
    assert n_cheap > 0 and n_strong > 0, (n_cheap, n_strong)

    # ---- replay warm-started from it ----
    data = os.path.join(tmp, "tiny.jsonl")
    write_dataset(data)
    prices = os.path.join(tmp, "prices.json")
    with open(prices, "w") as f:
        json.dump({"cheap": {"input": 0.5, "output": 1.5},
                   "m-strong": {"input": 5.0, "output": 15.0}}, f)
    cfg = os.path.join(tmp, "replay.json")
    with open(cfg, "w") as f:
        json.dump({"listen": "127.0.0.1:8080",
                   "arms": [L.arm("cheap", "http://127.0.0.1:9", "m", None, 1, 1)],
                   "router": {"dim": DIM}}, f)
    base = ["replay", "--data", data, "--prices", prices, "--config", cfg, "--format", "json",
            "--preference", "0.7", "--jobs", "1"]
    p = run(base + ["--warmup-export", dump, "--warmup-map", "strong=m-strong"])
    assert p.returncode == 0, "replay --warmup-export failed:\n%s" % p.stderr
    rep = json.loads(p.stdout)
    assert rep["warmup_export"] == dump
    assert rep["warmup_export_rows"] == len(acked), (rep["warmup_export_rows"], len(acked))
    assert rep["warmup_export_skipped"] == 0, rep["warmup_export_skipped"]
    assert rep["rows"] == 12, rep["rows"]
    assert "%d feedback rows applied" % len(acked) in p.stderr, p.stderr

    p = run(base + ["--warmup-export", dump])  # no map: "strong" is no model of the data
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["warmup_export_rows"] == n_cheap and rep["warmup_export_skipped"] == n_strong, rep

    p = run(base[:5] + ["--format", "json", "--warmup-export", dump])  # default dim 256
    assert p.returncode != 0 and "dim 16" in p.stderr and "dim=256" in p.stderr, p.stderr

    # features of another scale: refused, naming both values
    cfg_tw = os.path.join(tmp, "replay_tw.json")
    with open(cfg_tw, "w") as f:
        json.dump({"listen": "127.0.0.1:8080",
                   "arms": [L.arm("cheap", "http://127.0.0.1:9", "m", None, 1, 1)],
                   "router": {"dim": DIM, "text_weight": 1.0}}, f)
    p = run(base[:6] + [cfg_tw] + base[7:] + ["--warmup-export", dump])
    want = ("export has text_weight=0.5, config says text_weight=1; "
            "set router.text_weight in --config")
    assert p.returncode != 0 and want in p.stderr, p.stderr
    # an export of an older banditd has no text_weight: accepted (unknown)
    old_dump = os.path.join(tmp, "export_old.jsonl")
    meta = dict(lines[0])
    del meta["text_weight"]
    with open(dump) as f, open(old_dump, "w") as g:
        rest = f.read().split("\n", 1)[1]
        g.write(json.dumps(meta) + "\n" + rest)
    p = run(base[:6] + [cfg_tw] + base[7:] + ["--warmup-export", old_dump])
    assert p.returncode == 0, p.stderr

    p = run(base + ["--warmup-export", data])  # a dataset, not an export
    assert p.returncode != 0 and "export" in p.stderr, p.stderr
    print("t_export_warmup: ok (%d decisions, %d feedback rows exported; replay applied them)"
          % (len(decisions), len(feedback)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
