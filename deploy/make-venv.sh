#!/usr/bin/env bash
# make-venv.sh DIR: makes a Python virtual environment in DIR (under target/, ignored by git),
# installing Debian's python3-venv with apt-get first when the venv module is missing. Used by
# the ensure-*.sh scripts that install Python tools and PyPI packages.
set -euo pipefail
venv=$1
command -v python3 >/dev/null 2>&1 || { echo "error: python3 is needed (for $venv)" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    else
        echo "error: python3 -m venv failed; install Python's venv module" >&2
        exit 1
    fi
fi
