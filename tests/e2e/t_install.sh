#!/usr/bin/env bash
# t_install — `make install DESTDIR=$tmp PREFIX=/usr` produces the documented
# tree (docs/operations.md "Install"); `man -l` renders banditd(8) (skipped
# when man is absent); `systemd-analyze verify` accepts the unit (skipped when
# unavailable); the installed binary answers --version, --help and
# --check-config on the installed example config.
# Uses the build directory of $BANDITD (default build/) so that nothing else
# is rebuilt into the shared tree.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${BANDITD:-$ROOT/build/banditd}
BUILD_DIR=$(cd "$(dirname "$BIN")" && pwd)
tmp=$(mktemp -d /tmp/banditd-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
pass() { echo "PASS $1"; }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
skip() { echo "SKIP $1"; }

echo "== t_install"
if make -C "$ROOT" -s install BUILD="$BUILD_DIR" DESTDIR="$tmp/root" PREFIX=/usr \
    >"$tmp/make.log" 2>&1; then
    pass make_install
else
    bad make_install
    tail -20 "$tmp/make.log"
fi

R=$tmp/root
for f in usr/bin/banditd usr/bin/banditd-sim usr/share/banditd/banditd.example.json \
    usr/share/man/man8/banditd.8 usr/lib/systemd/system/banditd.service; do
    if [ -f "$R/$f" ]; then pass "tree:$f"; else bad "tree:$f missing"; fi
done
if [ -x "$R/usr/bin/banditd" ]; then pass "tree:binary_executable"; else bad "tree:binary_executable"; fi
mode=$(stat -c %a "$R/usr/share/man/man8/banditd.8" 2>/dev/null)
[ "$mode" = 644 ] && pass "tree:man_mode_644" || bad "tree:man_mode ($mode)"

v=$("$R/usr/bin/banditd" --version 2>&1)
case "$v" in "banditd "[0-9]*) pass "version ($v)" ;; *) bad "version: $v" ;; esac
if "$R/usr/bin/banditd" --help | grep -q -- "--check-config"; then pass help; else bad help; fi
c=$("$R/usr/bin/banditd" --check-config "$R/usr/share/banditd/banditd.example.json" 2>&1)
[ "$c" = ok ] && pass check_config_example || bad "check_config_example: $c"
echo '{"arms": []}' >"$tmp/bad.json"
if "$R/usr/bin/banditd" --check-config "$tmp/bad.json" >/dev/null 2>&1; then
    bad check_config_rejects_invalid
else
    pass check_config_rejects_invalid
fi

# Every option of --help is documented in the man page.
for opt in --config --listen --port-file --check-config --version --help replay \
    --data --preference --sweep --seed --warmup --format --prices --plot --jobs --out \
    SIGHUP SIGTERM shutdown_grace_s; do
    if grep -q -- "$(printf '%s' "$opt" | sed 's/-/\\\\-/g')" "$R/usr/share/man/man8/banditd.8" ||
        grep -q -- "$opt" "$R/usr/share/man/man8/banditd.8"; then
        :
    else
        bad "man page lacks $opt"
    fi
done
for opt in $("$R/usr/bin/banditd" --help 2>&1 | grep -o -- '--[a-z-]*' | sort -u); do
    grep -q -- "$(printf '%s' "$opt" | sed 's/-/\\\\-/g')" "$R/usr/share/man/man8/banditd.8" ||
        bad "man page lacks --help option $opt"
done
pass man_documents_options

if command -v man >/dev/null 2>&1; then
    out=$(MANWIDTH=80 man -l "$R/usr/share/man/man8/banditd.8" 2>"$tmp/man.err")
    if echo "$out" | grep -q "SYNOPSIS" && echo "$out" | grep -q -- "--check-config" &&
        ! grep -qi "warning" "$tmp/man.err"; then
        pass man_renders
    else
        bad "man_renders: $(head -5 "$tmp/man.err")"
    fi
else
    skip "man_renders (man not installed)"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
    # Point the unit at the installed tree so that verify can check the paths.
    unit=$tmp/banditd.service
    sed -e "s#/usr/bin/banditd#$R/usr/bin/banditd#g" \
        "$R/usr/lib/systemd/system/banditd.service" >"$unit"
    if MANPATH="$R/usr/share/man" systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1; then
        pass systemd_analyze_verify
    else
        bad "systemd_analyze_verify:"
        cat "$tmp/verify.log"
    fi
    for k in DynamicUser=yes StateDirectory=banditd ProtectSystem=strict NoNewPrivileges=yes \
        ProtectHome=yes PrivateTmp=yes RestrictAddressFamilies= 'ExecReload=/bin/kill -HUP $MAINPID'; do
        grep -qF -- "$k" "$unit" || bad "unit lacks $k"
    done
    pass unit_hardening_keys
else
    skip "systemd_analyze_verify (systemd-analyze not installed)"
fi

if [ $fail -eq 0 ]; then echo "all passed"; exit 0; fi
echo "$fail failed"
exit 1
