#!/usr/bin/env bash
# Run every end-to-end test (tests/e2e/t_*.py, t_*.sh). Each starts what it
# needs (the real daemon, fake upstreams) on loopback and stops it.
# Set E2E_ONLY=pattern to run a subset.
set -u
here=$(cd "$(dirname "$0")" && pwd)
export BUILD=${BUILD:-build}
export BANDITD=${BANDITD:-$(pwd)/$BUILD/banditd}
export BANDITD_SIM=${BANDITD_SIM:-$(pwd)/$BUILD/banditd-sim}
pass=0; fail=0; failed=()
for t in "$here"/t_*.py "$here"/t_*.sh; do
    [ -e "$t" ] || continue
    name=$(basename "$t")
    [[ -n ${E2E_ONLY:-} && $name != *${E2E_ONLY}* ]] && continue
    start=$(date +%s)
    case $t in
        *.py) python3 "$t" >"/tmp/e2e-$name.log" 2>&1 ;;
        *.sh) bash "$t" >"/tmp/e2e-$name.log" 2>&1 ;;
    esac
    rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1)); echo "PASS $name (${took}s)"
    else
        fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (${took}s, exit $rc)"
        tail -n 60 "/tmp/e2e-$name.log"
    fi
done
echo "e2e: $pass passed, $fail failed"
[ $fail -eq 0 ]
