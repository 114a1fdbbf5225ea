#!/usr/bin/env bash
# Instructions per proxied request, banditd's own process, under callgrind.
# banditd (LinUCB over 2 arms, store as in bench/proxy.sh) runs under
# valgrind --tool=callgrind in front of the nginx fake upstream
# (bench/nginx/upstream.conf); bench/send_n.py sends the ~1 KB chat body of
# bench/chat.lua over one kept-alive connection. Two runs, N1 and N2 requests:
# Ir per request = (Ir(N2) − Ir(N1)) / (N2 − N1), which cancels start-up,
# shutdown and the first request's warm-up. Threads are counted apart
# (--separate-threads): the event-loop thread (thread 1, the request path) and
# the others (the store's SQLite writer). Prints the top functions of the
# loop thread in the N2 run too.
# STORE=0 runs without the store (no store.path), to isolate its cost;
# CALLGRIND_ARGS adds valgrind options (e.g. --cache-sim=yes).
# FLOOR=1 profiles bench/null_proxy instead (NULL_PROXY=path; the same
# libmicrohttpd + libcurl usage with no work of its own, bench/proxy.sh's
# "floor"). Both print the loop thread's Ir and system calls per request split
# by library (bench/callgrind_split.py).
#   usage: bench/profile.sh        env: BANDITD, N1=200, N2=2200, TOP=25, KEEP=dir, STORE=1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BANDITD=${BANDITD:-$root/${BUILD:-build}/banditd}
N1=${N1:-200}
N2=${N2:-2200}
TOP=${TOP:-25}
FLOOR=${FLOOR:-0}
NULL_PROXY=${NULL_PROXY:-$root/${BUILD:-build}/bench/null_proxy}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
command -v valgrind >/dev/null || { echo "profile: valgrind not found" >&2; exit 2; }

tmp=$(mktemp -d /tmp/bench-profile.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$tmp"/callgrind.* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;"
up_port=$(free_port)
sed -e "s#@PREFIX@#$tmp#g" -e "s#@PORT@#$up_port#g" -e "s#@USER@#$user_line#g" \
    "$here/nginx/upstream.conf" >"$tmp/upstream.conf"
"$NGINX" -e stderr -p "$tmp" -c "$tmp/upstream.conf" -g 'daemon off;' 2>"$tmp/upstream.log" &
pids+=($!)
python3 - "$up_port" "$tmp/banditd.db" "${STORE:-1}" >"$tmp/banditd.json" <<'EOF'
import json, sys
port = int(sys.argv[1])
arms = [{"name": "arm%d" % i, "base_url": "http://127.0.0.1:%d/v1" % port,
         "model": "bench-model-%d" % i, "price_in_per_mtok": 0.15 + 2.0 * i,
         "price_out_per_mtok": 0.6 + 8.0 * i, "timeout_ms": 60000,
         "connect_timeout_ms": 5000} for i in range(2)]
cfg = {"listen": "127.0.0.1:8080", "arms": arms, "aliases": ["auto"],
       "router": {"policy": "linucb", "dim": 256}, "log": {"level": "warn"}}
if sys.argv[3] != "0":
    # No time-based snapshot: a run under callgrind lasts over a minute, and
    # a snapshot in one run only (~10k Ir per request) would be noise.
    cfg["store"] = {"path": sys.argv[2], "snapshot_interval_s": 86400}
print(json.dumps(cfg))
EOF

run() { # n → total Ir
    local n=$1 out="$tmp/callgrind.out.$1"
    rm -f "$tmp/banditd.port"
    # A fresh store per run: the N2 run must not restore (and count) what the
    # N1 run left (store_load_model + dpotri, ~14k Ir per request over 1000).
    rm -f "$tmp"/banditd.db "$tmp"/banditd.db-wal "$tmp"/banditd.db-shm
    local cmd=("$BANDITD" --config "$tmp/banditd.json" --listen 127.0.0.1:0
        --port-file "$tmp/banditd.port") port=""
    if [[ $FLOOR == 1 ]]; then
        port=$(free_port)
        cmd=("$NULL_PROXY" "$port" "http://127.0.0.1:$up_port/v1/chat/completions")
    fi
    # shellcheck disable=SC2086 # CALLGRIND_ARGS: extra options, e.g. --cache-sim=yes
    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --separate-threads=yes ${CALLGRIND_ARGS:-} \
        --callgrind-out-file="$out" "${cmd[@]}" >"$tmp/bd.$n.out" 2>"$tmp/bd.$n.err" &
    local vp=$!
    pids+=($vp)
    for _ in $(seq 600); do
        [[ -n $port ]] && python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" \
            2>/dev/null && echo "$port" >"$tmp/banditd.port"
        [[ -s $tmp/banditd.port ]] && break
        sleep 0.1
    done
    [[ -s $tmp/banditd.port ]] || { echo "profile: banditd did not start" >&2; cat "$tmp/bd.$n.err" >&2; exit 1; }
    python3 "$here/send_n.py" "$(cat "$tmp/banditd.port")" "$n" >&2
    kill -TERM "$vp"
    wait "$vp" || true
    # "loop others": thread 1's total, then the sum over the other threads
    local t1 rest=0 f v
    t1=$(awk '/^summary:|^totals:/ {print $2; exit}' "$out-01")
    for f in "$out"-*; do
        [[ $f == "$out-01" ]] && continue
        v=$(awk '/^summary:|^totals:/ {print $2; exit}' "$f")
        rest=$((rest + ${v:-0}))
    done
    echo "$t1 $rest"
}

echo "profile: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
read -r l1 o1 < <(run "$N1")
read -r l2 o2 < <(run "$N2")
python3 - "$N1" "$N2" "$l1" "$o1" "$l2" "$o2" <<'EOF2'
import sys
n1, n2, l1, o1, l2, o2 = map(int, sys.argv[1:])
per = lambda a, b: (b - a) / (n2 - n1)
print("callgrind: instructions per proxied request (Ir(%d) - Ir(%d)) / %d:" % (n2, n1, n2 - n1))
print("  event-loop thread  %8.0f" % per(l1, l2))
print("  other threads      %8.0f  (store writer)" % per(o1, o2))
print("  whole process      %8.0f" % per(l1 + o1, l2 + o2))
EOF2
python3 "$here/callgrind_split.py" "$N1" "$tmp/callgrind.out.$N1-01" "$N2" "$tmp/callgrind.out.$N2-01"
if command -v callgrind_annotate >/dev/null; then
    echo "top functions of the event-loop thread (exclusive, run with $N2 requests):"
    callgrind_annotate "$tmp/callgrind.out.$N2-01" 2>/dev/null |
        grep -E '^ *[0-9,]+ ' | head -n "$TOP"
fi
