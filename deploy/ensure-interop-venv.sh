#!/usr/bin/env bash
# Makes the Python environment of the interoperability test (tests/tests/interop.rs): an
# OAuth client library and a JOSE library that are not the project's own, pinned in
# tests/interop/requirements.txt, installed from PyPI into target/interop-venv (ignored by
# git). Reused while the requirements file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/interop-venv
requirements=tests/interop/requirements.txt
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "error: python3 is needed for the interoperability test" >&2; exit 1; }
mkdir -p target
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
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
