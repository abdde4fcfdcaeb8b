#!/usr/bin/env bash
# Install everything (first run only), then run the main job: the digits leaderboard suite as a
# sweep (teachers, then 110 student trials on Ray Tune, each an MLflow run) and its leaderboard
# (leaderboards/digits/README.md, CSVs, figures, index.html). Extra arguments go to the sweep.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
started=$SECONDS
kdbench sweep leaderboards/digits "$@"
kdbench leaderboard leaderboards/digits
echo "kdbench: main job done in $((SECONDS - started)) s; the table is in leaderboards/digits/README.md," \
    "the page in leaderboards/digits/index.html" >&2
