#!/usr/bin/env bash
# check_metrics.sh FILE|-  — validate a Prometheus text exposition with
# `promtool check metrics` (Debian package `prometheus`).
#
# Strict: both parse errors (promtool exit 1) and lint problems (exit 3) fail;
# banditd's exposition is expected to be lint-clean (docs/metrics.md).
# Exit status: 0 valid and lint-clean, 1 invalid or lint problems (promtool's
# findings on stderr), 77 promtool not installed (callers treat it as "skip"),
# 2 usage error.
set -u
if [ $# -ne 1 ]; then
    echo "usage: $0 FILE|-" >&2
    exit 2
fi
PROMTOOL=${PROMTOOL:-promtool}
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    echo "check_metrics: promtool not found (apt-get install prometheus); skipping" >&2
    exit 77
fi
src=$1
if [ "$src" != - ] && [ ! -r "$src" ]; then
    echo "check_metrics: cannot read $src" >&2
    exit 2
fi
if [ "$src" = - ]; then
    out=$("$PROMTOOL" check metrics 2>&1)
else
    out=$("$PROMTOOL" check metrics <"$src" 2>&1)
fi
rc=$?
if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "check_metrics: promtool check metrics failed (exit $rc):" >&2
    printf '%s\n' "$out" >&2
    exit 1
fi
exit 0
