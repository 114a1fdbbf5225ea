#!/usr/bin/env bash
# Fuzz smoke test: build every libFuzzer harness in tests/fuzz/ and run each
# for FUZZ_SMOKE_TIME seconds (default 10) from its seed corpus. Fails on any
# crash, sanitizer report, leak, failed invariant or build failure. Skips
# (exit 0) only when clang is absent.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if ! command -v "${CC_FUZZ:-clang}" >/dev/null 2>&1; then
    echo "SKIP: ${CC_FUZZ:-clang} not installed, libFuzzer smoke test not run"
    exit 0
fi
out=${FUZZ_OUT:-$(mktemp -d /tmp/banditd-fuzz-smoke.XXXXXX)}
FUZZ_OUT=$out tests/fuzz/run.sh -t "${FUZZ_SMOKE_TIME:-10}"
rc=$?
if [ $rc -ne 0 ]; then
    echo "fuzz smoke FAILED (exit $rc); artifacts and logs kept in $out"
    ls -l "$out"/artifacts/*/ 2>/dev/null
    exit 1
fi
echo "fuzz smoke passed"
[ -z "${FUZZ_OUT:-}" ] && rm -rf "$out"
exit 0
