#!/usr/bin/env bash
# Creates (once) and activates the Python environment kdbench runs in, then installs this
# checkout into it. The environment lives outside the clone, keyed on the pinned versions, so
# every clone with the same pins reuses it; set KDBENCH_VENV to put it somewhere else.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
key="$(cat "$root/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -c1-12)"
venv="${KDBENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kdbench/venv-$key}"
quiet=(-q --disable-pip-version-check)
if [ ! -f "$venv/.complete" ]; then
    echo "kdbench: creating the environment in $venv (first run only, ~3 minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install "${quiet[@]}" -c "$root/constraints.txt" pip setuptools wheel 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    # Dependencies first (pinned), then the package itself without touching them.
    "$venv/bin/pip" install "${quiet[@]}" -c "$root/constraints.txt" \
        -r <("$venv/bin/python" "$root/scripts/requirements.py" "$root/pyproject.toml" test dev) 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    "$venv/bin/python" -c "import torch, torchvision, timm, ray, mlflow, scipy, pytest" \
        || { echo "kdbench: the environment in $venv is incomplete; see the pip output above" >&2; exit 1; }
    touch "$venv/.complete"
fi
# Point the environment at this checkout (fast; no dependency is touched).
"$venv/bin/pip" install "${quiet[@]}" --no-deps --no-build-isolation -e "$root" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
export HF_HUB_OFFLINE=1
