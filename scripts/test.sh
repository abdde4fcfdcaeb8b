#!/usr/bin/env bash
# Install everything (first run only) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "kdbench: pytest collected no tests (exit 5); treating that as a failure of the test command" >&2
    exit 1
fi
exit "$status"
