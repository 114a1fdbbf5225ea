#!/usr/bin/env bash
# Run every end-to-end test (tests/e2e/t_*.py, t_*.sh). Each starts what it
# needs (the real daemon, fake upstreams) on loopback and stops it.
#
# Environment (see tests/README.md):
#   BUILD              build dir of the binaries (default build)
#   BANDITD, BANDITD_SIM  the binaries (default $BUILD/banditd, $BUILD/banditd-sim)
#   E2E_ONLY="a b"     run only the scripts whose name contains one of the words
#   E2E_SKIP="a b"     skip the scripts whose name contains one of the words
#   E2E_TEST_TIMEOUT   seconds one script may take before it is killed (default 600)
#   E2E_LOGDIR         where each script's output goes (default a new /tmp dir)
#   E2E_LABEL          prefix of the closing line (default "e2e")
# Prints one PASS/FAIL line per script (with its own "N passed, N failed" when
# it prints one) and the closing line "<label>: N passed, N failed", counting
# test cases (a script that prints no case count counts as one case; a failed
# script counts at least one failure).
set -u
here=$(cd "$(dirname "$0")" && pwd)
export BUILD=${BUILD:-build}
export BANDITD=${BANDITD:-$(pwd)/$BUILD/banditd}
export BANDITD_SIM=${BANDITD_SIM:-$(pwd)/$BUILD/banditd-sim}
logdir=${E2E_LOGDIR:-$(mktemp -d /tmp/banditd-e2e-logs.XXXXXX)}
mkdir -p "$logdir"
label=${E2E_LABEL:-e2e}
limit=${E2E_TEST_TIMEOUT:-600}

matches() { # name, space-separated words: 0 if name contains one of them
    local w
    for w in $2; do [[ $1 == *"$w"* ]] && return 0; done
    return 1
}

pass=0; fail=0; spass=0; sfail=0; failed=()
for t in "$here"/t_*.py "$here"/t_*.sh; do
    [ -e "$t" ] || continue
    name=$(basename "$t")
    [[ -n ${E2E_ONLY:-} ]] && ! matches "$name" "$E2E_ONLY" && continue
    [[ -n ${E2E_SKIP:-} ]] && matches "$name" "$E2E_SKIP" && continue
    log="$logdir/$name.log"
    start=$(date +%s)
    case $t in
        *.py) timeout -k 10 "$limit" python3 "$t" >"$log" 2>&1 ;;
        *.sh) timeout -k 10 "$limit" bash "$t" >"$log" 2>&1 ;;
    esac
    rc=$?
    took=$(( $(date +%s) - start ))
    # The script's own closing line "N passed, N failed", if any.
    counts=$(grep -aE '(^|[^0-9])[0-9]+ passed, [0-9]+ failed' "$log" | tail -n1 |
             sed -nE 's/^(.*[^0-9])?([0-9]+) passed, ([0-9]+) failed.*/\2 \3/p')
    p=1; f=0
    [ -n "$counts" ] && read -r p f <<<"$counts"
    if [ $rc -eq 0 ] && [ "$f" -eq 0 ]; then
        spass=$((spass + 1)); pass=$((pass + p))
        echo "PASS $name (${took}s${counts:+, $p cases})"
    else
        [ "$f" -eq 0 ] && { f=1; [ "$p" -gt 0 ] && [ -z "$counts" ] && p=0; }
        pass=$((pass + p)); fail=$((fail + f))
        sfail=$((sfail + 1)); failed+=("$name")
        why="exit $rc"; [ $rc -eq 124 ] && why="killed after ${limit}s"
        echo "FAIL $name (${took}s, $why${counts:+, $p passed, $f failed}; log $log)"
        tail -n 60 "$log"
    fi
done
[ $sfail -gt 0 ] && echo "$label failed scripts: ${failed[*]}"
echo "$label scripts: $spass passed, $sfail failed"
echo "$label: $pass passed, $fail failed"
[ $sfail -eq 0 ]
