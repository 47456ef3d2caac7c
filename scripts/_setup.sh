# Sourced by scripts/demo and scripts/test: a .venv with torch pinned first, then reftkit and its dev tools.
# torch is installed alone and pinned (a CPU wheel here); an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TORCH_SPEC="${REFTKIT_TORCH:-torch==2.13.0}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv" >&2
    "$PY" -m venv .venv
fi
STAMP=.venv/.reftkit-installed
WANT="$(cat pyproject.toml; echo "$TORCH_SPEC")"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        echo "[setup] installing $TORCH_SPEC" >&2
        .venv/bin/python -m pip install -q "$TORCH_SPEC"
    fi
    echo "[setup] installing reftkit with dev tools" >&2
    .venv/bin/python -m pip install -q -e ".[dev]"
    printf '%s' "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
