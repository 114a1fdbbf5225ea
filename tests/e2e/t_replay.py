#!/usr/bin/env python3
"""End-to-end test of `banditd replay` on the real logged data: the bundled
RouteLLM dev file (always), and AlpacaEval from ../shared/data (when present).
The baselines are recomputed here, independently, from the jsonl."""
import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

BANDITD = os.environ.get("BANDITD", "build/banditd")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUTELLM = os.path.join(ROOT, "data", "routellm_gpt4_vs_mixtral.dev.jsonl.gz")
ALPACA = os.path.join(ROOT, "..", "shared", "data", "alpacaeval_12models.dev.jsonl")
PRICES = os.path.join(ROOT, "data", "prices.json")


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def baselines(rows):
    models = []
    for r in rows:
        for m in r["outcomes"]:
            if m not in models:
                models.append(m)
    rows = [r for r in rows if all(m in r["outcomes"] for m in models)]
    n = len(rows)
    mean = {m: (sum(r["outcomes"][m]["quality"] for r in rows) / n,
                sum(r["outcomes"][m]["cost_usd"] for r in rows) / n) for m in models}
    strong = max(models, key=lambda m: (mean[m][0], -models.index(m)))
    cheapest = min(models, key=lambda m: (mean[m][1], models.index(m)))
    oq = oc = 0.0
    for r in rows:
        best = min(models, key=lambda m: (-r["outcomes"][m]["quality"],
                                          r["outcomes"][m]["cost_usd"], models.index(m)))
        oq += r["outcomes"][best]["quality"]
        oc += r["outcomes"][best]["cost_usd"]
    return dict(n=n, strong=strong, cheapest=cheapest, mean=mean, oracle=(oq / n, oc / n))


def close(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(b))


def replay(*args):
    p = subprocess.run([BANDITD, "replay", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"replay {args}: exit {p.returncode}\n{p.stderr}"
    return p.stdout


def check_json(out, ref, npoints):
    j = json.loads(out)
    assert j["rows"] == ref["n"], (j["rows"], ref["n"])
    assert j["strong"] == ref["strong"] and j["cheapest"] == ref["cheapest"], j
    b = j["baselines"]
    for key, (q, c) in (("always_strong", ref["mean"][ref["strong"]]),
                        ("always_cheapest", ref["mean"][ref["cheapest"]]),
                        ("oracle", ref["oracle"])):
        assert close(b[key]["mean_quality"], q), (key, b[key], q)
        assert close(b[key]["mean_cost_usd"], c), (key, b[key], c)
    for key in ("random", "non_contextual"):
        assert {"mean_quality", "mean_cost_usd", "mean_latency_ms"} <= set(b[key]), b[key]
    assert len(j["points"]) == npoints
    qs = ref["mean"][ref["strong"]][0]
    cs = ref["mean"][ref["strong"]][1]
    for p in j["points"]:
        assert close(sum(p["arm_share"].values()), 1.0), p["arm_share"]
        assert close(p["quality_retention"], p["mean_quality"] / qs)
        assert close(p["cost_saving"], 1 - p["mean_cost_usd"] / cs)
        # the router can never beat the per-prompt oracle's quality
        assert p["mean_quality"] <= ref["oracle"][0] + 1e-12, p
    for k in ("saving_at_95", "saving_at_97"):
        assert 0.0 <= j[k] <= 1.0, (k, j[k])
    return j


def main():
    if not os.access(BANDITD, os.X_OK):
        print(f"banditd not built at {BANDITD}")
        return 1
    rows = load(ROUTELLM)
    ref = baselines(rows)
    assert ref["n"] == 10693, ref["n"]
    print("RouteLLM reference: always-strong %.4f / $%.6f, always-cheapest %.4f / $%.6f, "
          "oracle %.4f / $%.6f" % (*ref["mean"][ref["strong"]], *ref["mean"][ref["cheapest"]],
                                   *ref["oracle"]))
    assert ref["strong"] == "gpt-4-1106-preview" and 0.81 < ref["mean"][ref["strong"]][0] < 0.83

    out = replay("--data", ROUTELLM, "--sweep", "3", "--seed", "1", "--format", "json")
    j = check_json(out, ref, 3)
    assert 0.0 <= j["apgr"] <= 1.2 and 0.0 <= j["cpt50"] <= 1.0, j
    # preference 0: cost only → (nearly) always Mixtral; preference 1: (nearly) always GPT-4
    p0, p1 = j["points"][0], j["points"][-1]
    assert p0["arm_share"]["mixtral-8x7b-instruct-v0.1"] > 0.99, p0
    assert p1["quality_retention"] > 0.97, p1
    print(f"sweep 3: apgr {j['apgr']:.3f}, saving@97 {j['saving_at_97']:.3f}")

    # the same seed gives the same result; csv has one line per point
    out_csv = replay("--data", ROUTELLM, "--sweep", "3", "--seed", "1", "--format", "csv",
                     "--prices", PRICES)
    recs = list(csv.DictReader(io.StringIO(out_csv)))
    assert len(recs) == 3, out_csv
    for rec, p in zip(recs, j["points"]):
        assert abs(float(rec["mean_quality"]) - p["mean_quality"]) < 1e-5, (rec, p)

    # table + plot
    with tempfile.TemporaryDirectory() as tmp:
        svg = os.path.join(tmp, "pareto.svg")
        table = replay("--data", ROUTELLM, "--preference", "0.9", "--plot", svg)
        assert "oracle" in table and "saving" in table, table
        assert os.path.exists(svg + ".gp"), os.listdir(tmp)
        if shutil.which("gnuplot"):
            with open(svg) as f:
                assert "<svg" in f.read(2000)

    if os.path.exists(ALPACA):
        arows = load(ALPACA)
        aref = baselines(arows)
        out = replay("--data", ALPACA, "--prices", PRICES, "--sweep", "3", "--format", "json")
        aj = check_json(out, aref, 3)
        assert len(aj["models"]) == 12, aj["models"]
        print(f"AlpacaEval: strong {aref['strong']}, saving@97 {aj['saving_at_97']:.3f}")
    else:
        print("AlpacaEval data absent: skipped that part")
    print("t_replay: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
