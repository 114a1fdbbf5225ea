#!/usr/bin/env bash
# Build the libFuzzer harnesses (tests/fuzz/fuzz_*.c) against the project's
# sources and run each one for a time and/or a number of executions.
#
#   tests/fuzz/run.sh [-t SECONDS] [-n RUNS] [-b] [HARNESS ...]
#     -t  wall-time cap per harness (default $FUZZ_TIME or 60)
#     -n  execution cap per harness (default $FUZZ_RUNS or none)
#     -b  build only
#     HARNESS  e.g. openai_chat pref (default: every tests/fuzz/fuzz_*.c)
#   env: FUZZ_OUT (default build/fuzz): objects, binaries, the growing work
#        corpus, crash artifacts and logs; FUZZ_ARGS: extra libFuzzer flags;
#        CC_FUZZ (default clang).
#
# The seeds in tests/fuzz/corpus/<harness>/ are read, never written: new
# inputs go to $FUZZ_OUT/corpus/<harness>/, crashes to
# $FUZZ_OUT/artifacts/<harness>/. Exit 0 when no harness found anything,
# 1 when one crashed/leaked/timed out, 2 when the build failed.
set -u
cd "$(dirname "$0")/../.."
here=tests/fuzz
time_cap=${FUZZ_TIME:-60}
runs_cap=${FUZZ_RUNS:-}
build_only=0
while getopts "t:n:bh" opt; do
    case $opt in
        t) time_cap=$OPTARG ;;
        n) runs_cap=$OPTARG ;;
        b) build_only=1 ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

CC_FUZZ=${CC_FUZZ:-clang}
if ! command -v "$CC_FUZZ" >/dev/null 2>&1; then
    echo "fuzz: $CC_FUZZ not found (libFuzzer needs clang)" >&2
    exit 2
fi
out=${FUZZ_OUT:-build/fuzz}
mkdir -p "$out/obj" "$out/bin" "$out/logs"

PKGS="libcjson openblas sqlite3"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
WARN="-Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Werror"
CFLAGS="-g -O1 -std=c11 -D_GNU_SOURCE $WARN -Iinclude $(pkg-config --cflags $PKGS)"
LIBS="$(pkg-config --libs $PKGS) -lpthread -lm"
CFLAGS_SRC="-g -O1 -std=c11 -D_GNU_SOURCE -w -Iinclude $(pkg-config --cflags $PKGS)"

# The modules the harnesses reach, compiled once with coverage
# instrumentation into an archive (the linker takes only what each needs, so
# one module that does not compile breaks only the harnesses that use it).
MODULES="config pref openai feedback decisions features router linucb store util err log xblob"
objs=()
for m in $MODULES; do
    o=$out/obj/$m.o
    if [ ! -e "$o" ] || [ "src/$m.c" -nt "$o" ] || [ -n "$(find include/banditd -newer "$o" -name '*.h' 2>/dev/null | head -n1)" ]; then
        # Warnings are the owners' gcc build's business (-Werror there), not ours.
        if ! "$CC_FUZZ" $CFLAGS_SRC $SAN -fsanitize=fuzzer-no-link -c -o "$o" "src/$m.c" \
            2>"$out/obj/$m.err"; then
            # A module clang cannot compile (e.g. a gcc-only builtin) is built
            # with cc, uninstrumented, so that the harnesses still link; the
            # parsers under test are not in such a module.
            echo "fuzz: clang cannot compile src/$m.c ($(grep -m1 error: "$out/obj/$m.err"));" \
                "using cc without instrumentation for it" >&2
            if ! cc $CFLAGS_SRC -c -o "$o" "src/$m.c"; then
                echo "fuzz: src/$m.c does not compile; harnesses that need it will not link" >&2
                rm -f "$o"
                continue
            fi
        fi
    fi
    objs+=("$o")
done
rm -f "$out/libfuzzsrc.a"
ar rcs "$out/libfuzzsrc.a" "${objs[@]}"

if [ $# -eq 0 ]; then
    set -- $(ls $here/fuzz_*.c | sed 's|.*/fuzz_||; s|\.c$||')
fi

# JSON harnesses share a dictionary; the preference header has its own.
dict_for() {
    case $1 in
        pref) echo "$here/pref.dict" ;;
        *) echo "$here/json.dict" ;;
    esac
}

status=0
summary=()
for h in "$@"; do
    bin=$out/bin/fuzz_$h
    if [ ! -e "$here/fuzz_$h.c" ]; then
        echo "fuzz: no harness $here/fuzz_$h.c" >&2
        status=2
        continue
    fi
    if ! "$CC_FUZZ" $CFLAGS $SAN -fsanitize=fuzzer -o "$bin" "$here/fuzz_$h.c" \
        "$out/libfuzzsrc.a" $LIBS; then
        echo "fuzz: building fuzz_$h failed" >&2
        summary+=("$(printf '%-12s BUILD FAILED' "$h")")
        status=2
        continue
    fi
    [ $build_only -eq 1 ] && continue
    mkdir -p "$out/corpus/$h" "$out/artifacts/$h"
    args=(-max_total_time="$time_cap" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
          -artifact_prefix="$out/artifacts/$h/")
    [ -n "$runs_cap" ] && args+=(-runs="$runs_cap")
    d=$(dict_for "$h")
    [ -e "$d" ] && args+=(-dict="$d")
    seeds=()
    [ -d "$here/corpus/$h" ] && seeds=("$here/corpus/$h")
    log=$out/logs/$h.log
    echo "fuzz: $h (max ${time_cap}s${runs_cap:+, $runs_cap runs}) log $log"
    start=$(date +%s.%N)
    # One BLAS thread: the harnesses are single-threaded and the machine is shared.
    OPENBLAS_NUM_THREADS=1 "$bin" "${args[@]}" ${FUZZ_ARGS:-} "$out/corpus/$h" "${seeds[@]}" \
        >"$log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | sed 's/cov: //')
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
    verdict=ok
    if [ $rc -ne 0 ]; then
        verdict="FOUND (exit $rc): $(grep -m1 -E 'ERROR: |runtime error|check failed|deadly signal' "$log")"
        status=1
        tail -n 40 "$log" >&2
    fi
    summary+=("$(printf '%-12s execs=%-10s time=%ss exec/s=%-7s cov=%-5s rss=%sMB %s' \
        "$h" "${execs:-?}" "$secs" "${rate:-?}" "${cov:-?}" "${rss:-?}" "$verdict")")
done
[ $build_only -eq 1 ] && exit $status
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}" | tee "$out/summary.txt"
exit $status
