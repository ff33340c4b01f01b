#!/usr/bin/env bash
# Creates .venv (Python 3.10+) and installs rusty_ws into it, with the extras given as arguments.
# Run by serve.sh and test.sh; safe to run again (pip skips what is there).
# A half-made .venv (no python, or a python without pip: an interrupted `python3 -m venv`, or
# Debian's python3 without python3-venv) is reported with the command that removes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

half_made() {
  {
    echo "setup-env.sh: $1."
    echo "This .venv is half-made. Delete it, then run the command again:"
    printf '  rm -rf %q\n' "$PWD/.venv"
  } >&2
  exit 1
}

echo "setting up .venv (first run installs packages)..." >&2
if [ ! -e .venv ]; then
  if ! "$PYTHON" -m venv .venv; then
    if [ -e .venv ]; then
      half_made "'$PYTHON -m venv .venv' failed (on Debian and Ubuntu, apt-get install python3-venv first)"
    fi
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  half_made ".venv exists but .venv/bin/python does not run"
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  half_made ".venv/bin/python has no pip (an interrupted venv, or one made without ensurepip)"
fi
extras=${1:-}
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
# An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE set the interpreter writes no
# .pyc either: every `rusty-ws serve` would compile its 42 modules from source, a third of its start-up
# (docs/performance.md, "Start-up, session 15"). compileall writes the missing and stale ones only.
.venv/bin/python -m compileall -q rusty_ws || true  # a syntax error shows here, and again where it is imported
