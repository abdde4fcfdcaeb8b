#!/usr/bin/env bash
# Install everything (first run only) and run the main job on the embedded digits data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec kdbench demo "$@"
