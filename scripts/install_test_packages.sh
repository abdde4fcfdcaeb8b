#!/usr/bin/env bash
# Installs the system packages some tests use: Debian's chromium and chromedriver (the
# leaderboard page test drives a headless browser) and dataset-fashion-mnist (the real-data
# test reads /usr/share/datasets/fashion-mnist). Each test skips without its package.
# Idempotent (does nothing when all are present) and quiet; scripts/test.sh calls it before the
# tests. Needs root or password-less sudo, and apt (Debian or Ubuntu).
set -euo pipefail
packages=()
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    packages+=(chromium chromium-driver)
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    packages+=(dataset-fashion-mnist)
fi
if [ "${#packages[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_packages.sh: apt-get not found; install ${packages[*]} with your" \
        "package manager (the tests that need them skip without them)" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_test_packages.sh: run as root or install sudo; apt needs root to install" \
            "${packages[*]}" >&2
        exit 1
    fi
    sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_test_packages.sh: installing ${packages[*]} (first run only)" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
