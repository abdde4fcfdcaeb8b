#!/usr/bin/env bash
# Installs the headless browser the leaderboard page test drives: Debian's chromium and its
# chromedriver. Idempotent (does nothing when both are present) and quiet; scripts/test.sh
# calls it before the tests. Needs root or password-less sudo, and apt (Debian or Ubuntu).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: apt-get not found; install chromium and chromedriver with your" \
        "package manager (the browser test skips without them)" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_browser.sh: run as root or install sudo; apt needs root to install" \
            "chromium" >&2
        exit 1
    fi
    sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_browser.sh: installing chromium and chromium-driver (~500 MB, first run only)" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version >&2
chromedriver --version >&2
