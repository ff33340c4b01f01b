#!/usr/bin/env bash
# Installs what the tests need (system packages too, as root), then runs every test.
# Extra arguments go to pytest (e.g. -k seed -x).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# nginx: the scaling tests run docs/scaling.md's proxy configuration (in the foreground, as
# the test user, on a free port); Debian's package is only the binary for them.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
fi

scripts/setup-env.sh test
exec .venv/bin/python -m pytest "$@"
