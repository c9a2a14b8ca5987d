#!/usr/bin/env bash
# .milvus-venv: the Milvus standalone server of the tests and of `make milvus-server`, installed with
# .venv's uv from requirements-milvus.lock (a separate process: it need not share the TFX lock).
# Like setup_venv.sh it writes only inside the project (and the uv cache) and stamps last.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.milvus-venv"
rm -f "$VENV/.installed"
BASE=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
if [ ! -x "$VENV/bin/python" ]; then
  .venv/bin/uv venv --quiet --clear --python "$BASE" "$VENV"  # --clear: a half-made or moved one
fi
.venv/bin/uv pip sync --quiet --python "$VENV/bin/python" requirements-milvus.lock
"$VENV/bin/python" -c 'import milvus' || { echo "error: .milvus-venv cannot import milvus; run 'make milvus-setup' again" >&2; exit 1; }
touch "$VENV/.installed"
