#!/usr/bin/env bash
# Run every Check unit-test binary given; print one line per binary and a
# closing summary line "<label>: N passed, N failed" (N counts checks).
#
# Environment (see tests/README.md):
#   UNIT_WRAPPER   command prefix for each binary, e.g. "tests/valgrind.sh"
#                  (word-split; export CK_FORK=no with valgrind)
#   UNIT_TIMEOUT   seconds one binary may take before it is killed (default 600)
#   UNIT_LABEL     prefix of the closing line (default "unit")
#   CK_DEFAULT_TIMEOUT  Check's per-test timeout when forking (default 120)
set -u
label=${UNIT_LABEL:-unit}
limit=${UNIT_TIMEOUT:-600}
read -r -a wrap <<<"${UNIT_WRAPPER:-}"
pass=0; fail=0; failed_bins=()
for t in "$@"; do
    start=$(date +%s)
    out=$(CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120} timeout -k 10 "$limit" \
          "${wrap[@]}" "$t" 2>&1); rc=$?
    took=$(( $(date +%s) - start ))
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n1)
    n=$(printf '%s' "$line" | sed -nE 's/.*Checks: ([0-9]+), Failures: ([0-9]+), Errors: ([0-9]+).*/\1 \2 \3/p')
    c=0; f=0; e=0
    [ -n "$n" ] && read -r c f e <<<"$n"
    why=""
    # A sanitizer report in a forked check may not change the exit status: count it.
    if printf '%s\n' "$out" | grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error: '; then
        [ $rc -eq 0 ] && rc=98
    fi
    if [ $rc -ne 0 ] && [ $((f + e)) -eq 0 ]; then
        # Checks passed (or none ran) but the binary failed: a crash, a
        # timeout, or a valgrind error (exit 99). Count the binary as a failure.
        e=$((e + 1)); c=$((c + 1))
        case $rc in
            99) why=" [valgrind reported errors]" ;;
            98) why=" [sanitizer report]" ;;
            124) why=" [killed after ${limit}s]" ;;
            *) why=" [exit $rc]" ;;
        esac
    fi
    pass=$((pass + c - f - e)); fail=$((fail + f + e))
    echo "$(basename "$t"): ${line:-no summary (exit $rc)}${why} (${took}s)"
    if [ $rc -ne 0 ] || [ -z "$n" ]; then
        failed_bins+=("$(basename "$t")")
        printf '%s\n' "$out" | grep -vE '^Running suite' | tail -n 60
    fi
done
[ ${#failed_bins[@]} -gt 0 ] && echo "$label failed binaries: ${failed_bins[*]}"
echo "$label: $pass passed, $fail failed"
[ $fail -eq 0 ] && [ ${#failed_bins[@]} -eq 0 ]
