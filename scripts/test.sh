#!/usr/bin/env bash
# Installs what the tests need (system packages too, as root), then runs every test.
# Extra arguments go to pytest (e.g. -k seed -x).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli --cluster create: the Redis Cluster tests build their clusters with it (Debian: redis-tools).
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# nginx: the scaling tests run docs/scaling.md's proxy configuration (in the foreground, as
# the test user, on a free port); Debian's package is only the binary for them.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# systemd-analyze: tests/test_deployment.py verifies docs/deployment.md's unit (no systemd needs to run).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# curl: tests/test_docs_examples.py runs the docs' curl examples.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The browser tests drive Debian's Chromium (never a browser downloaded by Playwright).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
fi

# The JavaScript client's tests run under Node's own test runner; Debian's nodejs (18) is too old.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "Node.js 20 or newer is needed for tests/js (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

scripts/setup-env.sh test
echo "lint: ruff (scripts/ruff.toml) and mypy (setup.cfg)"
.venv/bin/ruff check --config scripts/ruff.toml rusty_ws tests scripts
.venv/bin/mypy
# Two workers, a test file each at a time (module fixtures stay whole): -n 0 (or RUSTY_WS_TEST_WORKERS=0) runs
# in this process, e.g. to debug with -s or --pdb. A later -n in "$@" wins.
exec .venv/bin/python -m pytest -n "${RUSTY_WS_TEST_WORKERS:-2}" --dist loadfile "$@"
