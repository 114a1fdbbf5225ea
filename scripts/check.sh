#!/usr/bin/env bash
# `make check`: every test phase, timed, with one closing line
# "N passed, N failed" (all phases together; it is the last line printed).
#
# Phases (CHECK_PHASES selects a subset, in this order):
#   build       make all unit-build                      (build/)
#   unit        Check unit tests                          scripts/run-unit.sh
#   e2e         every end-to-end test                     tests/e2e/run.sh
#   asan-build  make SANITIZE=address,undefined ...       (build-san/)
#   asan-unit   every unit test under ASan+UBSan (+LSan)
#   asan-e2e    e2e tests under ASan+UBSan, but $CHECK_ASAN_E2E_SKIP
#   vg-unit     unit tests under valgrind memcheck        ($CHECK_VG_UNIT)
#   vg-e2e      the daemon under valgrind memcheck        ($CHECK_VG_E2E)
# With SANITIZE set (make SANITIZE=address,undefined check) only build, unit
# and e2e run, all against the sanitized build. See tests/README.md.
set -u
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
JOBS=${CHECK_JOBS:-2}
SAN=address,undefined

# The subsets (measured choices: tests/README.md explains them).
# asan-e2e runs every e2e script except these: the fuzz smoke builds its own
# clang ASan binaries, t_install only packages, t_replay is CPU-bound replay
# of the real data set (test_replay covers the replay module under ASan).
CHECK_ASAN_E2E_SKIP=${CHECK_ASAN_E2E_SKIP:-t_fuzz_smoke t_install t_replay}
# valgrind: the parsers and stores (test_linucb*, test_router and test_replay
# are numeric/CPU-bound: minutes under valgrind); the daemon for the request
# path, hostile input and the feedback API.
CHECK_VG_UNIT=${CHECK_VG_UNIT:-test_auth test_config test_dataset test_decisions test_features test_feedback test_health test_metrics test_openai test_pref test_reload test_stats test_store test_store_redis test_util}
CHECK_VG_E2E=${CHECK_VG_E2E:-t_smoke t_proxy t_errors t_feedback_api}
FAULTS_N_ASAN=${FAULTS_N_ASAN:-5000}

if [ -n "${SANITIZE:-}" ]; then
    BUILD=build-san
    default_phases="build unit e2e"
else
    BUILD=build
    default_phases="build unit e2e asan-build asan-unit asan-e2e vg-unit vg-e2e"
fi
phases=${CHECK_PHASES:-$default_phases}

export OPENBLAS_NUM_THREADS=1
# Sanitizer reports are fatal and go to stderr (run-unit.sh and e2elib look for them).
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

total_pass=0; total_fail=0; summary=(); build_ok=1; asan_ok=1
t_all=$(date +%s)

# run_phase NAME CMD...: run it, tee its output, add its "X: N passed, N failed"
# closing line (the last one printed) to the totals.
run_phase() {
    local name=$1; shift
    local out; out=$(mktemp /tmp/banditd-check.XXXXXX)
    local t0 c0; t0=$(date +%s); cpu_now; c0=$CPU_NOW
    echo "==== phase $name"
    "$@" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    cpu_now
    local took=$(( $(date +%s) - t0 )) cpu=$(( CPU_NOW - c0 ))
    local counts
    counts=$(grep -aE '^[a-z0-9-]+: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n1 |
             sed -nE 's/^[^:]+: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p')
    rm -f "$out"
    local p=0 f=0
    [ -n "$counts" ] && read -r p f <<<"$counts"
    [ $rc -ne 0 ] && [ "$f" -eq 0 ] && f=1   # a failed build, or a runner that died
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    local status=ok; [ $rc -ne 0 ] && status=FAILED
    summary+=("$(printf '%-11s %5ss wall %5ss cpu  %-6s %s' "$name" "$took" "$cpu" "$status" \
                 "${counts:+$p passed, $f failed}")")
    return $rc
}

cpu_tmp=$(mktemp /tmp/banditd-check-cpu.XXXXXX)
trap 'rm -f "$cpu_tmp"' EXIT
cpu_now() { # CPU_NOW = user+sys seconds of every waited-for child so far (`times`
            # must run in this shell, not in a $(...) subshell)
    times >"$cpu_tmp"
    CPU_NOW=$(tail -n1 "$cpu_tmp" | awk '{ t = 0; for (i = 1; i <= 2; i++) {
                  split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t }')
}

want() { [[ " $phases " == *" $1 "* ]]; }
skip() { summary+=("$(printf '%-11s %5s       %5s      skipped (%s)' "$1" "-" "-" "$2")"); }

bins() { # build dir, list of names (empty: all)
    local d=$1; shift
    if [ $# -eq 0 ]; then ls "$d"/tests/test_* 2>/dev/null; return; fi
    local n; for n in "$@"; do [ -x "$d/tests/$n" ] && echo "$d/tests/$n"; done
}

if want build; then
    run_phase build $MAKE --no-print-directory -j"$JOBS" all unit-build || build_ok=0
fi
if want unit; then
    if [ $build_ok = 0 ]; then skip unit "build failed"; else
        run_phase unit scripts/run-unit.sh $(bins $BUILD); fi
fi
if want e2e; then
    if [ $build_ok = 0 ]; then skip e2e "build failed"; else
        run_phase e2e env BUILD=$BUILD BANDITD="$PWD/$BUILD/banditd" \
            BANDITD_SIM="$PWD/$BUILD/banditd-sim" tests/e2e/run.sh; fi
fi
if want asan-build; then
    run_phase asan-build $MAKE --no-print-directory -j"$JOBS" SANITIZE=$SAN all unit-build ||
        asan_ok=0
fi
if want asan-unit; then
    if [ $asan_ok = 0 ]; then skip asan-unit "asan-build failed"; else
        run_phase asan-unit env UNIT_LABEL=unit-asan \
            TEST_LINUCB_UPDATES=${TEST_LINUCB_UPDATES:-100000} scripts/run-unit.sh $(bins build-san); fi
fi
if want asan-e2e; then
    if [ $asan_ok = 0 ]; then skip asan-e2e "asan-build failed"; else
        run_phase asan-e2e env BUILD=build-san BANDITD="$PWD/build-san/banditd" \
            BANDITD_SIM="$PWD/build-san/banditd-sim" E2E_LABEL=e2e-asan E2E_SKIP="$CHECK_ASAN_E2E_SKIP" \
            FAULTS_N="$FAULTS_N_ASAN" tests/e2e/run.sh; fi
fi
if want vg-unit || want vg-e2e; then
    if ! command -v valgrind >/dev/null 2>&1; then
        echo "valgrind is not installed (scripts/install-deps.sh installs it as root)"
        total_fail=$((total_fail + 1)); summary+=("valgrind    -      FAILED not installed")
        phases=${phases//vg-/skipped-}
    fi
fi
if want vg-unit; then
    if [ $build_ok = 0 ]; then skip vg-unit "build failed"; else
        run_phase vg-unit env CK_FORK=no UNIT_WRAPPER=tests/valgrind.sh UNIT_LABEL=unit-valgrind \
            scripts/run-unit.sh $(bins build $CHECK_VG_UNIT); fi
fi
if want vg-e2e; then
    if [ $build_ok = 0 ]; then skip vg-e2e "build failed"; else
        run_phase vg-e2e env BUILD=build BANDITD="$PWD/tests/e2e/banditd-valgrind" \
            BANDITD_SIM="$PWD/build/banditd-sim" \
            BANDITD_REAL="$PWD/build/banditd" E2E_TIMEOUT_SCALE=${E2E_TIMEOUT_SCALE:-6} \
            E2E_LABEL=e2e-valgrind E2E_ONLY="$CHECK_VG_E2E" tests/e2e/run.sh; fi
fi

cpu_now
echo "==== summary (per phase: wall time, CPU time of its processes; total $(( $(date +%s) - t_all ))s wall, ${CPU_NOW}s cpu)"
printf '%s\n' "${summary[@]}"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
