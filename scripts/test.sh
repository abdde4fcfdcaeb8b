#!/usr/bin/env bash
# Install everything (first run only), run the static checks, then the test suite. Extra
# arguments go to pytest. Every step runs even when an earlier one failed, so one run reports
# all of them; the failed steps are named at the end and the script then exits non-zero.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
# The leaderboard page test drives a headless chromium and the real-data test reads Debian's
# Fashion-MNIST; without them those tests skip, so a machine where they cannot be installed
# still runs everything else (KDBENCH_NO_BROWSER=1 opts out of installing them).
if [ -z "${KDBENCH_NO_BROWSER:-}" ]; then
    timeout 600 bash "$root/scripts/install_test_packages.sh" \
        || echo "kdbench: missing test packages; the browser and real-data tests will skip" >&2
fi

failed=()

# step NAME COMMAND...: run one check and remember NAME if it fails.
step() {
    local name="$1"
    shift
    echo "kdbench: $name: $*" >&2
    if ! "$@"; then
        echo "kdbench: $name failed" >&2
        failed+=("$name")
    fi
}

step "ruff check" ruff check .
step "ruff format" ruff format --check .
step "layers" python scripts/check_layers.py
step "mypy" mypy  # bench/ and methods/, as [tool.mypy] in pyproject.toml lists them

set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "kdbench: pytest collected no tests (exit 5); treating that as a failure of the test command" >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    failed+=("pytest")
fi
if [ "${#failed[@]}" -gt 0 ]; then
    printf -v names '%s, ' "${failed[@]}"
    echo "kdbench: failed steps: ${names%, }" >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
