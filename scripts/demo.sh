#!/usr/bin/env bash
# The demo: the RouteLLM logged outcomes through banditd's real HTTP path.
#   1. banditd-sim serves each model's logged answer (latency model, sped up)
#   2. banditd routes every prompt between the two simulated arms
#   3. the demo client posts the logged quality of the chosen arm as feedback
#   4. a final table, plus the offline Pareto curve from `banditd replay`
# Everything it starts, it stops. Env: PREF (default 0.9: see docs/results.md, "The demo"), SEED (1),
# SPEED (simulator speed-up, 200), CONC (client concurrency, 16), LIMIT (rows).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DATA=${DATA:-data/routellm_gpt4_vs_mixtral.dev.jsonl.gz}
PREF=${PREF:-0.9}
SEED=${SEED:-1}
SPEED=${SPEED:-200}
CONC=${CONC:-16}
LIMIT=${LIMIT:-0}
OUT=${OUT:-$BUILD/demo}
mkdir -p "$OUT"
rm -f "$OUT"/*.port "$OUT"/*.db*

pids=()
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_file() {
    for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done
    echo "demo: timed out waiting for $1" >&2; return 1
}

echo "== starting the simulator (logged answers of both models, ${SPEED}x faster than real time)"
"$BUILD/banditd-sim" --data "$DATA" --port 0 --port-file "$OUT/sim.port" --speed "$SPEED" \
    >"$OUT/sim.log" 2>&1 &
pids+=($!)
wait_file "$OUT/sim.port"
SIM_PORT=$(cat "$OUT/sim.port")

cat >"$OUT/banditd.json" <<JSON
{
  "listen": "127.0.0.1:0",
  "arms": [
    {"name": "gpt-4-1106-preview", "base_url": "http://127.0.0.1:$SIM_PORT/v1",
     "model": "gpt-4-1106-preview", "price_in_per_mtok": 10.0, "price_out_per_mtok": 30.0,
     "timeout_ms": 60000},
    {"name": "mixtral-8x7b-instruct-v0.1", "base_url": "http://127.0.0.1:$SIM_PORT/v1",
     "model": "mixtral-8x7b-instruct-v0.1", "price_in_per_mtok": 0.6,
     "price_out_per_mtok": 0.6, "timeout_ms": 60000}
  ],
  "router": {"seed": $SEED},
  "log": {"level": "warn"}
}
JSON

echo "== starting banditd"
"$BUILD/banditd" --config "$OUT/banditd.json" --port-file "$OUT/banditd.port" \
    >"$OUT/banditd.log" 2>&1 &
pids+=($!)
wait_file "$OUT/banditd.port"
PORT=$(cat "$OUT/banditd.port")

echo "== sending every prompt through banditd (preference '$PREF', seed $SEED, $CONC concurrent)"
python3 scripts/demo_client.py --data "$DATA" --port "$PORT" --preference "$PREF" \
    --seed "$SEED" --concurrency "$CONC" --limit "$LIMIT" --json "$OUT/live.json"

echo
echo "== the same rows offline: banditd replay, same seed, preference and router settings"
REPLAY_LIMIT=()
[ "$LIMIT" != 0 ] && REPLAY_LIMIT=(--limit "$LIMIT")
"$BUILD/banditd" replay --data "$DATA" --config "$OUT/banditd.json" --prices data/prices.json \
    --preference "$PREF" --seed "$SEED" "${REPLAY_LIMIT[@]+"${REPLAY_LIMIT[@]}"}" --jobs 2 \
    --prompt-tokens estimate --format json --out "$OUT/replay_point.json"
python3 - "$OUT/live.json" "$OUT/replay_point.json" <<'PY2'
import json, sys
live = json.load(open(sys.argv[1]))
rep = json.load(open(sys.argv[2]))
pt = rep["points"][0]
print(f"{'':22}{'live (HTTP)':>14}{'replay':>12}")
print(f"{'rows':22}{live['ok']:>14}{pt['rows']:>12}")
print(f"{'quality retention':22}{100 * live['quality_retention']:>13.1f}%{100 * pt['quality_retention']:>11.1f}%")
print(f"{'cost saving':22}{100 * live['cost_saving']:>13.1f}%{100 * pt['cost_saving']:>11.1f}%")
for m, sh in live["arm_share"].items():
    print(f"{'share ' + m[:16]:22}{100 * sh:>13.1f}%{100 * pt['arm_share'].get(m, 0):>11.1f}%")
print("(with CONC=1 live and replay make the same decisions; with CONC > 1 a decision")
print(" misses the feedback of the requests still in flight. See docs/results.md.)")
PY2

echo
echo "== the cost-quality curve offline (banditd replay --sweep, same seed; prompts priced by their billed tokens)"
"$BUILD/banditd" replay --data "$DATA" --prices data/prices.json --sweep "${SWEEP:-11}" \
    --seed "$SEED" --jobs 2 "${REPLAY_LIMIT[@]+"${REPLAY_LIMIT[@]}"}" --format table \
    --plot "$OUT/pareto.svg" >"$OUT/replay.txt"
sed -n '/^  pref/,/^saving @ >=97%/p' "$OUT/replay.txt"
echo
echo "live summary: $OUT/live.json   replay: $OUT/replay_point.json, $OUT/replay.txt"
echo "plot: $OUT/pareto.svg"
