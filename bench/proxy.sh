#!/usr/bin/env bash
# Side-by-side proxy overhead benchmark (issue 9), all on loopback:
#   direct   wrk → fake upstream (nginx returning a static chat.completion)
#   nginx    wrk → nginx proxy_pass (keepalive upstream pool) → fake upstream
#   banditd  wrk → banditd (LinUCB routing over 2 arms, both the same upstream)
#            → fake upstream
#   floor    wrk → bench/null_proxy (the same libmicrohttpd + libcurl usage as
#            banditd, no work of its own: the floor of banditd's stack)
#            → fake upstream
# wrk POSTs a ~1 KB chat request (bench/chat.lua) with CONNS connections for
# DUR seconds per run; runs are interleaved direct/nginx/banditd/floor ×
# ROUNDS and the medians are printed: req/s, p50/p99 latency, overhead over
# direct (p50, p99), CPU per request of the proxy process (utime+stime from
# /proc), peak RSS (VmHWM), then the ratios banditd/nginx and floor/nginx.
#
# Fairness: nginx runs worker_processes 1 and banditd serves from its one loop
# thread (the floor has one thread); none is pinned; all have their access log
# off. wrk (1 thread), the fake upstream (1 worker) and the proxy share the
# machine's cores.
#
#   usage: bench/proxy.sh            (make bench-proxy)
#   env:   BANDITD (default build/banditd)  CONNS=32  DUR=5  ROUNDS=3
#          ARMS=2  STORE=1 (store.path in the temp dir)  WRK_THREADS=1
#          BANDITD_B=path: a second banditd build (e.g. before a change),
#          measured interleaved as target "banditd-B" (same config)
#          NULL_PROXY (default build/bench/null_proxy, `make bench`)  FLOOR=0
#          skips the "floor" target
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BANDITD=${BANDITD:-$root/${BUILD:-build}/banditd}
CONNS=${CONNS:-32}
DUR=${DUR:-5}
ROUNDS=${ROUNDS:-3}
ARMS=${ARMS:-2}
STORE=${STORE:-1}
WRK_THREADS=${WRK_THREADS:-1}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
NULL_PROXY=${NULL_PROXY:-$root/${BUILD:-build}/bench/null_proxy}
FLOOR=${FLOOR:-1}

for t in wrk "$NGINX" python3; do
    command -v "$t" >/dev/null || { echo "bench-proxy: $t not found" >&2; exit 2; }
done
[[ -x $BANDITD ]] || { echo "bench-proxy: $BANDITD not built (make)" >&2; exit 2; }
[[ $FLOOR == 0 || -x $NULL_PROXY ]] ||
    { echo "bench-proxy: $NULL_PROXY not built (make bench, or FLOOR=0)" >&2; exit 2; }

tmp=$(mktemp -d /tmp/bench-proxy.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port
    for _ in $(seq 200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" \
            2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "bench-proxy: nothing listens on port $1" >&2
    return 1
}
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;"
render() { # template port uport
    sed -e "s#@PREFIX@#$tmp#g" -e "s#@PORT@#$2#g" -e "s#@UPORT@#${3:-0}#g" \
        -e "s#@USER@#$user_line#g" "$1"
}
worker_of() { # master pid → its (single) worker pid
    for _ in $(seq 100); do
        w=$(pgrep -P "$1" | head -n1 || true)
        [[ -n $w ]] && { echo "$w"; return 0; }
        sleep 0.05
    done
    return 1
}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

up_port=$(free_port)
render "$here/nginx/upstream.conf" "$up_port" >"$tmp/upstream.conf"
"$NGINX" -e stderr -p "$tmp" -c "$tmp/upstream.conf" -g 'daemon off;' 2>"$tmp/upstream.log" &
pids+=($!)
up_master=$!
wait_port "$up_port"
up_worker=$(worker_of "$up_master")

ng_port=$(free_port)
render "$here/nginx/proxy.conf" "$ng_port" "$up_port" >"$tmp/proxy.conf"
"$NGINX" -e stderr -p "$tmp" -c "$tmp/proxy.conf" -g 'daemon off;' 2>"$tmp/proxy.log" &
pids+=($!)
ng_master=$!
wait_port "$ng_port"
ng_worker=$(worker_of "$ng_master")

store_json=""
[[ $STORE == 1 ]] && store_json="\"store\": {\"path\": \"$tmp/banditd.db\"},"
python3 - "$ARMS" "$up_port" "$store_json" >"$tmp/banditd.json" <<'EOF'
import json, sys
n, port, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
arms = [{"name": "arm%d" % i, "base_url": "http://127.0.0.1:%d/v1" % port,
         "model": "bench-model-%d" % i, "price_in_per_mtok": 0.15 + 2.0 * i,
         "price_out_per_mtok": 0.6 + 8.0 * i, "timeout_ms": 30000,
         "connect_timeout_ms": 2000} for i in range(n)]
cfg = {"listen": "127.0.0.1:8080", "arms": arms, "aliases": ["auto"],
       "router": {"policy": "linucb", "alpha": 0.1, "lambda": 1.0, "mu0": 1.0, "dim": 256,
                  "default_preference": "balanced"},
       "log": {"level": "warn"},
       "limits": {"max_connections": 10000, "max_inflight": 10000}}
if store:
    cfg.update(json.loads("{" + store.rstrip(",") + "}"))
print(json.dumps(cfg, indent=2))
EOF
OPENBLAS_NUM_THREADS=1 "$BANDITD" --config "$tmp/banditd.json" --listen 127.0.0.1:0 \
    --port-file "$tmp/banditd.port" >"$tmp/banditd.out" 2>"$tmp/banditd.log" &
pids+=($!)
bd_pid=$!
for _ in $(seq 200); do [[ -s $tmp/banditd.port ]] && break; sleep 0.05; done
bd_port=$(cat "$tmp/banditd.port")
wait_port "$bd_port"
targets="direct nginx banditd"
if [[ $FLOOR != 0 ]]; then
    fl_port=$(free_port)
    "$NULL_PROXY" "$fl_port" "http://127.0.0.1:$up_port/v1/chat/completions" \
        >"$tmp/floor.out" 2>"$tmp/floor.log" &
    pids+=($!)
    fl_pid=$!
    wait_port "$fl_port"
    targets="$targets floor"
fi
if [[ -n ${BANDITD_B:-} ]]; then
    sed "s#$tmp/banditd.db#$tmp/banditd-b.db#" "$tmp/banditd.json" >"$tmp/banditd-b.json"
    OPENBLAS_NUM_THREADS=1 "$BANDITD_B" --config "$tmp/banditd-b.json" --listen 127.0.0.1:0 \
        --port-file "$tmp/banditd-b.port" >"$tmp/banditd-b.out" 2>"$tmp/banditd-b.log" &
    pids+=($!)
    bb_pid=$!
    for _ in $(seq 200); do [[ -s $tmp/banditd-b.port ]] && break; sleep 0.05; done
    bb_port=$(cat "$tmp/banditd-b.port")
    wait_port "$bb_port"
    targets="$targets banditd-B"
fi

# Sanity: each target answers the chat body with 200 before we time it.
for p in "$up_port" "$ng_port" "$bd_port" ${fl_port:-} ${bb_port:-}; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        -d '{"model":"auto","messages":[{"role":"user","content":"hi"}]}' \
        "http://127.0.0.1:$p/v1/chat/completions")
    [[ $code == 200 ]] || { echo "bench-proxy: port $p answered $code" >&2; exit 1; }
done

cpu_ticks() { # pid → utime+stime (clock ticks)
    awk '{print $14 + $15}' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

echo "bench-proxy: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
    "wrk -t$WRK_THREADS -c$CONNS -d${DUR}s, $ROUNDS rounds, $ARMS arms," \
    "store $([[ $STORE == 1 ]] && echo on || echo off)"
echo "  banditd $("$BANDITD" --version 2>/dev/null | head -n1), $($NGINX -v 2>&1 | sed 's/.*: //')"

res="$tmp/results.tsv"
: >"$res"
# Warm-up (also trains nothing: no feedback is posted; routing still scores).
for p in "$up_port" "$ng_port" "$bd_port" ${fl_port:-} ${bb_port:-}; do
    wrk -t1 -c"$CONNS" -d1s -s "$here/chat.lua" "http://127.0.0.1:$p/v1/chat/completions" \
        >/dev/null 2>&1 || true
done
for r in $(seq "$ROUNDS"); do
    for target in $targets; do
        case $target in
        direct) port=$up_port; pid=$up_worker ;;
        nginx) port=$ng_port; pid=$ng_worker ;;
        banditd) port=$bd_port; pid=$bd_pid ;;
        banditd-B) port=$bb_port; pid=$bb_pid ;;
        floor) port=$fl_port; pid=$fl_pid ;;
        esac
        c0=$(cpu_ticks "$pid")
        out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DUR}s" --latency -s "$here/chat.lua" \
            "http://127.0.0.1:$port/v1/chat/completions")
        c1=$(cpu_ticks "$pid")
        echo "$out" >"$tmp/wrk.$target.$r.txt"
        python3 - "$target" "$r" "$((c1 - c0))" "$hz" "$tmp/wrk.$target.$r.txt" >>"$res" <<'EOF'
import re, sys
target, rnd, ticks, hz, path = sys.argv[1:6]
t = open(path).read()
def dur(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)", s)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
n = int(re.search(r"(\d+) requests in", t).group(1))
p50 = dur(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = dur(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errs = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
cpu_us = int(ticks) / int(hz) * 1e6 / max(n, 1)
print("\t".join(map(str, [target, rnd, rps, p50, p99, cpu_us, n, errs])))
EOF
        tail -n1 "$res" | awk -F'\t' '{printf "  round %s %-9s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  cpu %.1f us/req  errors %s\n", $2, $1, $3, $4, $5, $6, $8}'
    done
done

hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
python3 - "$res" "$(hwm "$up_worker")" "$(hwm "$ng_worker")" "$(hwm "$bd_pid")" \
    "$(awk '/Threads/ {print $2}' "/proc/$bd_pid/status")" "$([[ -n ${bb_pid:-} ]] && hwm "$bb_pid")" \
    "$([[ -n ${fl_pid:-} ]] && hwm "$fl_pid")" <<'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hwm = {"direct": int(sys.argv[2]), "nginx": int(sys.argv[3]), "banditd": int(sys.argv[4])}
names = ["direct", "nginx", "banditd"]
if sys.argv[6]:
    hwm["banditd-B"] = int(sys.argv[6])
    names.append("banditd-B")
if sys.argv[7]:
    hwm["floor"] = int(sys.argv[7])
    names.insert(3, "floor")
med = {}
for t in names:
    rs = [r for r in rows if r[0] == t]
    med[t] = {k: st.median(float(r[i]) for r in rs)
              for k, i in (("rps", 2), ("p50", 3), ("p99", 4), ("cpu", 5))}
    med[t]["errors"] = sum(int(r[7]) for r in rs)
d = med["direct"]
print()
print("| target | req/s | p50 ms | p99 ms | p50 overhead ms | p99 overhead ms "
      "| proxy CPU us/req | peak RSS MiB | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for t in names:
    m = med[t]
    ov50 = "-" if t == "direct" else "%.3f" % (m["p50"] - d["p50"])
    ov99 = "-" if t == "direct" else "%.3f" % (m["p99"] - d["p99"])
    cpu = "(%.1f upstream)" % m["cpu"] if t == "direct" else "%.1f" % m["cpu"]
    print("| %s | %.0f | %.3f | %.3f | %s | %s | %s | %.1f | %d |"
          % (t, m["rps"], m["p50"], m["p99"], ov50, ov99, cpu, hwm[t] / 1024, m["errors"]))
n, b = med["nginx"], med["banditd"]
o50n, o50b = n["p50"] - d["p50"], b["p50"] - d["p50"]
o99n, o99b = n["p99"] - d["p99"], b["p99"] - d["p99"]
def ratio(a, c):
    return "%.2f" % (a / c) if c > 0 else "n/a (nginx overhead <= 0)"
print()
print("banditd/nginx: throughput %.2f (target >= 0.60), p50 overhead %s (target <= 2.0), "
      "p99 overhead %s, CPU/req %.2f, peak RSS %.2f; banditd threads %s"
      % (b["rps"] / n["rps"], ratio(o50b, o50n), ratio(o99b, o99n), b["cpu"] / n["cpu"],
         hwm["banditd"] / hwm["nginx"], sys.argv[5]))
if "floor" in med:
    f = med["floor"]
    o50f, o99f = f["p50"] - d["p50"], f["p99"] - d["p99"]
    print("floor/nginx: throughput %.2f, p50 overhead %s, p99 overhead %s, CPU/req %.2f, "
          "peak RSS %.2f; banditd/floor: throughput %.2f, CPU/req %.2f"
          % (f["rps"] / n["rps"], ratio(o50f, o50n), ratio(o99f, o99n), f["cpu"] / n["cpu"],
             hwm["floor"] / hwm["nginx"], b["rps"] / f["rps"], b["cpu"] / f["cpu"]))
ok = b["rps"] >= 0.6 * n["rps"] and (o50n <= 0 and o50b <= 0 or o50b <= 2 * max(o50n, 1e-9))
ok = ok and med["banditd"]["errors"] == 0 and med["nginx"]["errors"] == 0
print("acceptance (throughput >= 60%% of nginx, p50 overhead <= 2x nginx, no errors): %s"
      % ("PASS" if ok else "FAIL"))
EOF
