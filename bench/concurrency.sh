#!/usr/bin/env bash
# Concurrency benchmark: N requests held open at once through banditd against a
# fake upstream answering after SLOW_MS (default 2000). Prints requests,
# successes, wall time, p50/p99, banditd's threads before/during/after and its
# peak RSS.   usage: bench/concurrency.sh [N=2000] [extra load_client.py args]
#   e.g. bench/concurrency.sh 5000 --direct
# Env: BANDITD (default build/banditd), SLOW_MS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
n=${1:-2000}
shift || true
export BANDITD=${BANDITD:-$root/${BUILD:-build}/banditd}
# Each request costs the client one fd, banditd two, the fake upstream one (each
# process has its own limit).
want=$(( 2 * n + 1024 ))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $want ]]; then
    echo "warning: hard fd limit $hard < $want; raising to $hard only" >&2
    want=$hard
fi
ulimit -n "$want"
exec python3 "$here/load_client.py" --n "$n" --slow-ms "${SLOW_MS:-2000}" "$@"
