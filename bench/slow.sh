#!/usr/bin/env bash
# Slow-upstream concurrency benchmark (issue 9): for each N (default 2000 and
# 5000), N chat requests at once over N client connections through banditd to
# the e2e fake upstream answering after SLOW_MS (default 1000 ms). Reuses
# bench/concurrency.sh + bench/load_client.py (tests/e2e/e2elib.concurrency_run)
# and prints one summary row per N: req/s (successes / wall time), errors,
# banditd's peak RSS (VmHWM) and its thread count before / during (min..max) /
# after. Acceptance at 5000: zero errors, RSS < 200 MiB, constant threads.
#   usage: bench/slow.sh [N ...]          (make bench-slow)
#   env:   BANDITD (default build/banditd), SLOW_MS=1000, BARRIER=0 (1 = also
#          the barrier phase that proves all N were in flight at once)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=("$@")
[[ ${#ns[@]} -gt 0 ]] || ns=(2000 5000)
export SLOW_MS=${SLOW_MS:-1000}
extra=(--json)
[[ ${BARRIER:-0} == 1 ]] || extra+=(--no-barrier)
out=$(mktemp /tmp/bench-slow.XXXXXX)
trap 'rm -f "$out"' EXIT
status=0
for n in "${ns[@]}"; do
    echo "== $n concurrent, upstream $SLOW_MS ms"
    if ! "$here/concurrency.sh" "$n" "${extra[@]}" | tee -a "$out"; then
        status=1
    fi
done
python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print()
print("| concurrent | upstream ms | ok | errors | req/s | p50 s | p99 s | peak RSS MiB "
      "| threads before/during/after | banditd CPU s |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
good = True
for f in rows:
    n, ok = f["requests"], f.get("ok", 0)
    errs = n - ok
    rss = (f.get("rss_peak_kb") or 0) / 1024
    th = "%s / %s..%s / %s" % (f.get("threads_before"), f.get("threads_during_min"),
                               f.get("threads_during_max"), f.get("threads_after"))
    rps = ok / f["wall_s"] if f.get("wall_s") else float("nan")
    print("| %d | %d | %d | %d | %.0f | %.3f | %.3f | %.1f | %s | %.2f |"
          % (n, f["slow_ms"], ok, errs, rps, f.get("p50_s", float("nan")),
             f.get("p99_s", float("nan")), rss, th, f.get("cpu_s", float("nan"))))
    constant = f.get("threads_before") == f.get("threads_during_min") == \
        f.get("threads_during_max") == f.get("threads_after")
    if n >= 5000:
        good = good and errs == 0 and rss < 200 and constant
print("acceptance (5000 concurrent: 0 errors, RSS < 200 MiB, constant threads): %s"
      % ("PASS" if good and any(f["requests"] >= 5000 for f in rows) else
         "FAIL" if any(f["requests"] >= 5000 for f in rows) else "n/a (no 5000 run)"))
EOF
exit $status
