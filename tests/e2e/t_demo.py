#!/usr/bin/env python3
"""End-to-end test of the demo path on a small slice: banditd-sim ($BANDITD_SIM)
serves the bundled RouteLLM rows, banditd ($BANDITD) routes, and
scripts/demo_client.py sends LIMIT prompts and posts the logged quality as
feedback. Asserts that every request and every feedback succeeded and that the
summary JSON is consistent with the data (recomputed here), then that
`banditd replay --limit` on the same rows, seed and preference runs and
reports the same row count."""
import gzip
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BANDITD = os.environ.get("BANDITD", os.path.join(ROOT, "build", "banditd"))
SIM = os.environ.get("BANDITD_SIM", os.path.join(ROOT, "build", "banditd-sim"))
DATA = os.path.join(ROOT, "data", "routellm_gpt4_vs_mixtral.dev.jsonl.gz")
LIMIT = int(os.environ.get("DEMO_LIMIT", "300"))
SEED = 3

sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402
import demo_client  # noqa: E402  (the shuffle is checked against it)


def wait_port(path, proc, what):
    try:
        return E.wait_port_file(path, proc, 20.0, what)
    except RuntimeError as e:  # a failed case, not a crashed script
        raise AssertionError(str(e)) from None


def main():
    procs = []
    tmp = tempfile.mkdtemp(prefix="t_demo.")
    try:
        sim = subprocess.Popen([SIM, "--data", DATA, "--port", "0", "--port-file",
                                f"{tmp}/sim.port", "--speed", "1000"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/sim.log", "w"))
        procs.append(sim)
        sport = wait_port(f"{tmp}/sim.port", sim, "banditd-sim")
        cfg = {
            "listen": "127.0.0.1:0",
            "arms": [
                {"name": "gpt-4-1106-preview", "base_url": f"http://127.0.0.1:{sport}/v1",
                 "model": "gpt-4-1106-preview", "price_in_per_mtok": 10.0,
                 "price_out_per_mtok": 30.0, "timeout_ms": 60000},
                {"name": "mixtral-8x7b-instruct-v0.1",
                 "base_url": f"http://127.0.0.1:{sport}/v1",
                 "model": "mixtral-8x7b-instruct-v0.1", "price_in_per_mtok": 0.6,
                 "price_out_per_mtok": 0.6, "timeout_ms": 60000}],
            "store": {"path": f"{tmp}/state.db"},
            "log": {"level": "warn"},
        }
        with open(f"{tmp}/banditd.json", "w") as f:
            json.dump(cfg, f)
        d = subprocess.Popen([BANDITD, "--config", f"{tmp}/banditd.json", "--port-file",
                              f"{tmp}/banditd.port"],
                             stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/banditd.log", "w"))
        procs.append(d)
        port = wait_port(f"{tmp}/banditd.port", d, "banditd")

        out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo_client.py"),
                              "--data", DATA, "--port", str(port), "--preference", "0.9",
                              "--seed", str(SEED), "--concurrency", "4", "--limit", str(LIMIT),
                              "--json", f"{tmp}/live.json", "--quiet"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"demo client failed: {out.stdout}\n{out.stderr}"
        s = json.load(open(f"{tmp}/live.json"))

        # Recompute what the summary must say from the data and the same shuffle.
        rows = demo_client.load(DATA)
        demo_client.shuffle(rows, SEED)
        rows = rows[:LIMIT]
        models = list(rows[0]["outcomes"])
        qm = {m: sum(r["outcomes"][m]["quality"] for r in rows) / LIMIT for m in models}
        strong = max(models, key=lambda m: qm[m])
        cs = sum(r["outcomes"][strong]["cost_usd"] for r in rows)
        assert s["requests"] == LIMIT and s["ok"] == LIMIT and s["failed"] == 0, s
        assert s["feedback_ok"] == LIMIT and s["feedback_failed"] == 0, s
        assert s["strong_model"] == strong, (s["strong_model"], strong)
        assert abs(s["always_strong_quality"] - qm[strong]) < 1e-9
        assert abs(s["always_strong_cost_usd"] - cs) < 1e-9
        assert abs(sum(s["arm_share"].values()) - 1.0) < 1e-9
        assert abs(s["quality_retention"] - s["mean_quality"] / qm[strong]) < 1e-9
        assert abs(s["cost_saving"] - (1 - s["total_cost_usd"] / cs)) < 1e-9
        lo = min(qm.values())
        assert lo - 1e-9 <= s["mean_quality"] <= 1.0
        cheapest = min(sum(r["outcomes"][m]["cost_usd"] for r in rows) for m in models)
        assert cheapest - 1e-9 <= s["total_cost_usd"] <= max(
            sum(r["outcomes"][m]["cost_usd"] for r in rows) for m in models) + 1e-9
        assert s["latency_p50_ms"] <= s["latency_p99_ms"]

        # The router saw every feedback: /stats counts them.
        import urllib.request
        st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10))
        fb = sum(a.get("feedback", 0) for a in st.get("arms", []))
        assert fb == LIMIT, f"/stats feedback {fb} != {LIMIT}: {st}"

        # The offline replay of the same rows, seed and preference.
        rep = subprocess.run([BANDITD, "replay", "--data", DATA, "--prices",
                              os.path.join(ROOT, "data", "prices.json"), "--preference", "0.9",
                              "--seed", str(SEED), "--limit", str(LIMIT), "--prompt-tokens", "estimate",
                              "--format", "json"],
                             capture_output=True, text=True, timeout=300)
        assert rep.returncode == 0, rep.stderr
        pt = json.loads(rep.stdout)["points"][0]
        assert pt["rows"] == LIMIT, pt
        assert abs(json.loads(rep.stdout)["baselines"]["always_strong"]["mean_quality"]
                   - qm[strong]) < 1e-9
        print(f"t_demo: ok ({LIMIT} rows; live retention {s['quality_retention']:.3f} saving "
              f"{s['cost_saving']:.3f}; replay retention {pt['quality_retention']:.3f} saving "
              f"{pt['cost_saving']:.3f})")
        return 0
    finally:
        E.stop_procs(procs)


if __name__ == "__main__":
    sys.exit(main())
