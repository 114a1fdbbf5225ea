#!/usr/bin/env bash
# Install the Debian packages banditd needs to build, test and run its demo.
# As root: installs what is missing (apt-get). Otherwise: prints the command.
set -euo pipefail
PKGS=(build-essential pkg-config libmicrohttpd-dev libcurl4-openssl-dev libcjson-dev
      libopenblas-dev check libsqlite3-dev libhiredis-dev python3 curl
      redis-server nginx-light wrk gnuplot-nox prometheus nodejs npm valgrind
      clang libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
# nodejs/npm may come from elsewhere (a preinstalled node): accept a working one.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    tmp=()
    for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || tmp+=("$p"); done
    missing=("${tmp[@]+"${tmp[@]}"}")
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "banditd needs these Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
