#!/usr/bin/env bash
# Sets up .venv and runs the hub on ws://127.0.0.1:8081/ws (in-memory broker).
# Extra arguments go to `rusty-ws serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh   # says "setting up .venv ..." first: the first run installs for ~10 s
exec .venv/bin/rusty-ws serve --host 127.0.0.1 --port 8081 "$@"
