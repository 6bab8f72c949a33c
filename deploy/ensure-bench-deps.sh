#!/usr/bin/env bash
# Makes sure the tools `make bench` compares the gateway with, or drives it with, are
# installed: wrk (the load generator), nginx (the fixed upstream and the plain reverse proxy),
# haproxy (JWT verification at the edge) and taskset (CPU pinning, util-linux).
# Installs them with apt-get where it exists; elsewhere stops with one line saying what to
# install.
set -euo pipefail

missing=()
for tool in wrk nginx haproxy taskset; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

packages=()
for tool in "${missing[@]}"; do
    case "$tool" in
        nginx) packages+=(nginx-light) ;;
        taskset) packages+=(util-linux) ;;
        *) packages+=("$tool") ;;
    esac
done
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${packages[*]} with apt-get" >&2
    $sudo apt-get update -qq >/dev/null
    # The packages' own services are not wanted: the benchmark starts its own servers.
    $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${packages[@]}" >/dev/null
else
    echo "error: please install ${missing[*]} (no apt-get on this machine)" >&2
    exit 1
fi
