#!/usr/bin/env bash
# Create .venv from the machine's Python 3.10 and install the locked stack with uv.
# TFX 1.16 supports Python >=3.9,<3.11; the machine's default python3 may be newer.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
  if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys' >/dev/null 2>&1; then
    command -v python3.10; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
    if [ -n "$v" ] && [ -x "$(pyenv prefix "$v")/bin/python3.10" ]; then
      echo "$(pyenv prefix "$v")/bin/python3.10"; return
    fi
  fi
  echo "error: Python 3.10 not found (TFX 1.16 needs Python >=3.9,<3.11). Install it, e.g. 'pyenv install 3.10'." >&2
  exit 1
}

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  echo "uv not found; installing it with pip" >&2
  python3 -m pip install --quiet uv
  UV=(python3 -m uv)  # works before the new console script is on PATH (e.g. pyenv shims)
fi

PY310=$(find_python310)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
  rm -rf .venv
  "${UV[@]}" venv --quiet --python "$PY310" .venv
fi
VIRTUAL_ENV="$PWD/.venv" "${UV[@]}" pip sync --quiet requirements.lock
# The project itself, editable, without touching the locked dependencies.
VIRTUAL_ENV="$PWD/.venv" "${UV[@]}" pip install --quiet --no-deps -C editable_mode=compat -e .
