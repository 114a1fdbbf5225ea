#!/usr/bin/env bash
# Run PROGRAM ARGS under valgrind memcheck, failing (exit 99) on any memory
# error or on a definite/indirect leak. Used by `make check` for the unit tests
# (run with CK_FORK=no) and, through tests/e2e/banditd-valgrind, for the daemon.
# VALGRIND_OPTS adds options (e.g. "--track-origins=yes" while debugging).
set -u
here=$(cd "$(dirname "$0")" && pwd)
read -r -a extra <<<"${VALGRIND_OPTS:-}"
exec valgrind -q --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
    --num-callers=30 --suppressions="$here/valgrind.supp" "${extra[@]}" "$@"
