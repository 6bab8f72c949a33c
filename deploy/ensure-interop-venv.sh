#!/usr/bin/env bash
# Makes the Python environment of the interoperability test
# (system-tests/tests/interop.rs): an OAuth client library and a JOSE library that are not
# the project's own, pinned in system-tests/interop/requirements.txt, installed from PyPI
# into target/interop-venv (ignored by git). Reused while the requirements file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/interop-venv
requirements=system-tests/interop/requirements.txt
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
deploy/make-venv.sh "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
