#!/usr/bin/env bash
# Run every Check unit-test binary given; print one closing summary line.
set -u
pass=0; fail=0; failed_bins=()
for t in "$@"; do
    out=$(CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120} "$t" 2>&1); rc=$?
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n1)
    echo "$(basename "$t"): ${line:-no summary (exit $rc)}"
    n=$(printf '%s' "$line" | sed -nE 's/.*Checks: ([0-9]+), Failures: ([0-9]+), Errors: ([0-9]+).*/\1 \2 \3/p')
    if [ -n "$n" ]; then
        set -- "$@"; read -r c f e <<<"$n"
        pass=$((pass + c - f - e)); fail=$((fail + f + e))
    fi
    if [ $rc -ne 0 ] || [ -z "$n" ]; then
        [ -z "$n" ] && fail=$((fail + 1))
        failed_bins+=("$(basename "$t")")
        printf '%s\n' "$out" | grep -vE '^Running suite' | tail -n 40
    fi
done
echo "unit: $pass passed, $fail failed"
[ $fail -eq 0 ] && [ ${#failed_bins[@]} -eq 0 ]
