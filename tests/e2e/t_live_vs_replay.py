#!/usr/bin/env python3
"""Live vs replay: the daemon's HTTP path must route exactly like `banditd replay`.

banditd-sim ($BANDITD_SIM) serves the bundled RouteLLM rows, banditd ($BANDITD)
routes between the two simulated arms, and a *sequential* client sends the
first LIMIT rows in replay's shuffled order (scripts/demo_client.py's shuffle,
the same generator as replay.c), each prompt as the only user message, and
posts the logged quality of the arm named in X-Bandit-Arm to /feedback before
the next request. Then `banditd replay --limit LIMIT` runs on the same rows,
seed, preference and router settings (--config: the same file).

With one request at a time, both see the same features, the same prompt-token
estimate, the same rewards in the same order and the same completion tokens
(the simulator's usage is the logged one), so every decision must be the same:
the per-arm counts must be equal, and so must the summed logged quality and
cost of the chosen arms. The preferences used put no weight on latency, the one
input that legitimately differs (measured time on the live path, the latency
model in replay); a preference with a latency weight is not expected to match.

Cases: in-memory feedback with a profile preference ("balanced"), and the
durable feedback path (store.path set: feedback applied at the store's commit)
with a scalar preference. Regression for the live/replay gap of the demo
(docs/results.md): replay used the logged prompt tokens (which include an
unstored few-shot prefix) while the daemon estimates them from the request."""
import http.client
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BANDITD = os.environ.get("BANDITD", os.path.join(ROOT, "build", "banditd"))
SIM = os.environ.get("BANDITD_SIM", os.path.join(ROOT, "build", "banditd-sim"))
DATA = os.path.join(ROOT, "data", "routellm_gpt4_vs_mixtral.dev.jsonl.gz")
PRICES = os.path.join(ROOT, "data", "prices.json")
# (preference, seed, durable store?); LVR_CASES='[["0.9", 3, false]]' overrides.
CASES = json.loads(os.environ.get("LVR_CASES", '[["balanced", 1, false], ["0.8", 2, true]]'))
LIMIT = int(os.environ.get("LIVE_VS_REPLAY_LIMIT", "300"))

sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402
import demo_client  # noqa: E402  (load + the replay-identical shuffle)

ROWS = demo_client.load(DATA)


def wait_port(path, proc, what):
    try:
        return E.wait_port_file(path, proc, 30.0, what)
    except RuntimeError as e:  # a failed case, not a crashed script
        raise AssertionError(str(e)) from None


stop = E.stop_procs


def live(tmp, sport, pref, seed, store):
    cfg = {
        "listen": "127.0.0.1:0",
        "arms": [
            {"name": "gpt-4-1106-preview", "base_url": f"http://127.0.0.1:{sport}/v1",
             "model": "gpt-4-1106-preview", "price_in_per_mtok": 10.0,
             "price_out_per_mtok": 30.0, "timeout_ms": 60000},
            {"name": "mixtral-8x7b-instruct-v0.1", "base_url": f"http://127.0.0.1:{sport}/v1",
             "model": "mixtral-8x7b-instruct-v0.1", "price_in_per_mtok": 0.6,
             "price_out_per_mtok": 0.6, "timeout_ms": 60000}],
        "router": {"seed": seed},
        "log": {"level": "warn"},
    }
    if store:
        db = tempfile.mkdtemp(dir=tmp)  # a fresh store: no state from an earlier case
        cfg["store"] = {"path": f"{db}/state.db"}
    cpath = f"{tmp}/banditd.json"
    with open(cpath, "w") as f:
        json.dump(cfg, f)
    pfile = f"{tmp}/banditd.port"
    if os.path.exists(pfile):
        os.unlink(pfile)
    d = subprocess.Popen([BANDITD, "--config", cpath, "--port-file", pfile],
                         stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/banditd.log", "a"))
    try:
        port = wait_port(pfile, d, "banditd")
        rows = list(ROWS)
        demo_client.shuffle(rows, seed)
        rows = rows[:LIMIT]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        counts, q, cost = {}, 0.0, 0.0
        for i, row in enumerate(rows):
            body = json.dumps({"model": "auto",
                               "messages": [{"role": "user", "content": row["prompt"]}]})
            c.request("POST", "/v1/chat/completions", body,
                      {"Content-Type": "application/json", "X-Bandit-Preference": pref})
            r = c.getresponse()
            r.read()
            arm = r.getheader("X-Bandit-Arm")
            assert r.status == 200 and arm in row["outcomes"], (i, r.status, arm)
            out = row["outcomes"][arm]
            counts[arm] = counts.get(arm, 0) + 1
            q += out["quality"]
            cost += out["cost_usd"]
            fb = json.dumps({"request_id": r.getheader("X-Bandit-Request-Id"),
                             "reward": out["quality"]})
            c.request("POST", "/feedback", fb, {"Content-Type": "application/json"})
            fr = c.getresponse()
            fr.read()
            assert fr.status == 200, (i, "feedback", fr.status)
        c.request("GET", "/stats")
        st = json.loads(c.getresponse().read())
        c.close()
        fbn = sum(a.get("feedback", 0) for a in st["arms"])
        assert fbn == LIMIT, f"/stats counts {fbn} feedbacks, sent {LIMIT}"
        return cpath, counts, q, cost
    finally:
        stop([d])


def replay(cpath, pref, seed):
    rep = subprocess.run([BANDITD, "replay", "--data", DATA, "--config", cpath, "--prices",
                          PRICES, "--preference", pref, "--seed", str(seed), "--limit",
                          str(LIMIT), "--jobs", "1", "--prompt-tokens", "estimate",
                          "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    j = json.loads(rep.stdout)
    assert j["router"]["prompt_tokens"] == "estimate", j["router"]  # the daemon's estimate
    pt = j["points"][0]
    assert pt["rows"] == LIMIT, pt
    return pt


def case(tmp, sport, pref, seed, store):
    cpath, counts, q, cost = live(tmp, sport, pref, seed, store)
    pt = replay(cpath, pref, seed)
    rows = list(ROWS)
    demo_client.shuffle(rows, seed)
    rows = rows[:LIMIT]
    strong = "gpt-4-1106-preview"
    qs = sum(r["outcomes"][strong]["quality"] for r in rows)
    cs = sum(r["outcomes"][strong]["cost_usd"] for r in rows)
    rc = {m: round(sh * LIMIT) for m, sh in pt["arm_share"].items()}
    lc = {m: counts.get(m, 0) for m in rc}
    tag = f"pref {pref}, seed {seed}, {'store' if store else 'in-memory'}"
    print(f"  {tag}: live {lc} retention {q / qs:.4f} saving {1 - cost / cs:.4f}; "
          f"replay {rc} retention {pt['quality_retention']:.4f} saving {pt['cost_saving']:.4f}")
    assert lc == rc, f"{tag}: arm counts differ: live {lc}, replay {rc}"
    assert abs(q / qs - pt["quality_retention"]) < 1e-9, (tag, q / qs, pt["quality_retention"])
    assert abs((1 - cost / cs) - pt["cost_saving"]) < 1e-9, (tag, 1 - cost / cs,
                                                              pt["cost_saving"])


def main():
    tmp = tempfile.mkdtemp(prefix="t_live_vs_replay.")
    sim = subprocess.Popen([SIM, "--data", DATA, "--port", "0", "--port-file",
                            f"{tmp}/sim.port", "--speed", "1000"],
                           stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/sim.log", "w"))
    passed = failed = 0
    try:
        sport = wait_port(f"{tmp}/sim.port", sim, "banditd-sim")
        for pref, seed, store in CASES:
            try:
                case(tmp, sport, pref, seed, store)
                passed += 1
            except AssertionError as e:
                print(f"FAIL: {e}")
                failed += 1
    finally:
        stop([sim])
    print(f"t_live_vs_replay: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
