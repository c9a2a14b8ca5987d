#!/usr/bin/env bash
# Create .venv from Python 3.10 and install the locked stack into it, writing nothing outside the
# project but uv's (and pip's) download caches.
#
# - Python 3.10 comes from PATH (python3.10) or from pyenv (its versions, shims or not); TFX 1.16 needs
#   >=3.9,<3.11. The user's python3 is never used, so an externally-managed (PEP 668) one does not matter.
# - uv is not taken from PATH: it is installed into .venv itself, at the version pinned in
#   requirements.lock (so `uv pip sync` keeps it), and every uv command names .venv's interpreter.
# - The stamp .venv/.installed is written last, only after .venv imports the stack; without it the next
#   `make` runs this again and repairs whatever a failed or interrupted run left.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$PWD/.venv"
STAMP="$VENV/.installed"
STACK=(tfx tensorflow tensorflow_transform apache_beam tf_keras pymilvus)

die() { echo "error: $*" >&2; exit 1; }

rm -f "$STAMP"

find_python310() {
  if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    command -v python3.10; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
    if [ -n "$v" ] && [ -x "$(pyenv root)/versions/$v/bin/python3.10" ]; then
      echo "$(pyenv root)/versions/$v/bin/python3.10"; return
    fi
  fi
  die "Python 3.10 not found on PATH (python3.10) or in pyenv (TFX 1.16 needs Python >=3.9,<3.11): install it, e.g. 'pyenv install 3.10'"
}

venv_is_310() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null
}

if ! venv_is_310; then
  PY310=$(find_python310)
  echo "creating .venv from $PY310" >&2
  rm -rf "$VENV"
  "$PY310" -m venv "$VENV" || die "'$PY310 -m venv' failed (on Debian/Ubuntu: install python3.10-venv)"
fi

UV_PIN=$(grep -E '^uv==' requirements.lock) || die "requirements.lock pins no uv (add uv to requirements.in and run 'make lock')"
UV="$VENV/bin/uv"
if ! { [ -x "$UV" ] && [ "uv $("$UV" --version 2>/dev/null | awk '{print $2}')" = "uv ${UV_PIN#uv==}" ]; }; then
  echo "installing $UV_PIN into .venv" >&2
  # `uv pip sync` removes pip from .venv (it is not in the lock); ensurepip puts it back, inside .venv.
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --default-pip >/dev/null \
    || die "cannot bootstrap pip inside .venv"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "$UV_PIN" \
    || die "could not install $UV_PIN into .venv"
fi

"$UV" pip sync --quiet --python "$VENV/bin/python" requirements.lock
# The project itself, editable, without touching the locked dependencies.
"$UV" pip install --quiet --python "$VENV/bin/python" --no-deps -C editable_mode=compat -e .

# One line if the stack does not import (a broken wheel, a partial download): no stamp, so the next
# `make` tries again.
TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -W ignore - "${STACK[@]}" <<'EOF' || exit 1
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure means the environment is unusable
        first = (str(e).splitlines() or [""])[0]
        sys.exit(f"error: .venv cannot import {name} ({type(e).__name__}: {first}); run 'make setup' again")
EOF
# The recall service's gRPC stubs, from retrieval/service/recall_service.proto (not committed).
"$VENV/bin/python" -m retrieval.service.protos || die "could not generate the recall service's gRPC stubs"
touch "$STAMP"
