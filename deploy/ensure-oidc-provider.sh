#!/usr/bin/env bash
# Makes the real OpenID provider of the system tests (system-tests/src/oidc.rs): node's
# oidc-provider, pinned with its whole dependency tree in system-tests/oidc-provider/
# package.json and package-lock.json, installed from the npm registry into
# target/oidc-provider (ignored by git) with `npm ci`. Node.js and npm come from apt-get where
# they are missing. oidc-provider 8.x is pinned because 9.x wants Node.js 22 and Debian 12
# ships Node.js 18. Reused while the two files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=target/oidc-provider
source=system-tests/oidc-provider
stamp="$prefix/.installed"

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || { echo "error: please install ${missing[*]} (no apt-get on this machine)" >&2; exit 1; }
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} with apt-get" >&2
    $sudo apt-get update -qq >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || { echo "error: oidc-provider 8 needs Node.js 18 or later, this is $(node --version)" >&2; exit 1; }

want=$(cat "$source/package.json" "$source/package-lock.json")
if [ -f "$prefix/node_modules/oidc-provider/package.json" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
mkdir -p "$prefix"
cp "$source/package.json" "$source/package-lock.json" "$prefix/"
# Exactly the locked tree (integrity-checked), no install scripts, nothing written back.
(cd "$prefix" && npm ci --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error)
printf '%s' "$want" >"$stamp"
