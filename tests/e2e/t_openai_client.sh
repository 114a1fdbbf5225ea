#!/usr/bin/env bash
# banditd through the official `openai` npm client: installs it into
# tests/e2e/node_modules (npm install --no-audit --no-fund), starts a fake upstream
# and banditd (e2elib.py with-daemon), and runs openai_client.mjs against them:
# create, create+withResponse (X-Bandit-* headers, then /feedback via fetch),
# stream: true, an in-band stream error, a 404, models.list.
# Skips (exit 0) only when npm/node are absent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "SKIP t_openai_client.sh: npm/node not installed"
    exit 0
fi
cd "$here"
want=$(node -p 'require("./package.json").dependencies.openai')
have=$(node -p 'try { require("./node_modules/openai/package.json").version } catch (e) { "" }')
if [[ $have != "$want" ]]; then
    echo "installing openai@$want (npm $(npm --version), node $(node --version))"
    npm install --no-audit --no-fund --no-package-lock --loglevel=error
fi
echo "openai-node $(node -p 'require("./node_modules/openai/package.json").version')"
exec python3 "$here/e2elib.py" with-daemon -- node "$here/openai_client.mjs"
