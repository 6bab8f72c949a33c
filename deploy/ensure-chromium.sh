#!/usr/bin/env bash
# Makes sure the real browser of the console test (system-tests/tests/console.rs) is
# installed: Debian's Chromium and its ChromeDriver (packages chromium and chromium-driver),
# with apt-get. Selenium, which drives them, comes from PyPI into the interop venv
# (deploy/ensure-interop-venv.sh).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "error: please install chromium and chromium-driver (no apt-get on this machine)" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing chromium and chromium-driver with apt-get" >&2
$sudo apt-get update -qq >/dev/null
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
