#!/usr/bin/env bash
# `make run`: builds the binaries and runs the development stack in the foreground —
# NATS (mutual TLS, JetStream), the authz-server, the demo upstream and the gateway.
# Ctrl-C or SIGTERM stops everything it started. State lives under .dev/ and is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."

# CLUSTER=1 runs three NATS nodes (client ports 14222-14224, routes 16222-16224, mutual TLS
# on both) and a stream replicated three ways instead of the single node.
CLUSTER=${CLUSTER:-0}
NATS_PORT=14222 NATS_HTTP=18222
ports="$NATS_PORT 8081 9091 8080 9090 9001"
[ "$CLUSTER" = 1 ] && ports="$ports 14223 14224 16222 16223 16224"
for port in $ports; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "error: port $port is already in use on 127.0.0.1 (another 'make run'?)" >&2
        exit 1
    fi
done

cargo build --quiet --bins
mkdir -p .dev/authz .dev/nats
certs/make-dev-certs.sh .dev/certs gateway-1 gateway-2
if [ "$CLUSTER" = 1 ]; then
    for i in 1 2 3; do
        routes=$(for j in 1 2 3; do [ "$j" = "$i" ] || printf '127.0.0.1:1622%s,' "$((j + 1))"; done)
        deploy/nats/render-config.sh --certs .dev/certs --store ".dev/nats/node-$i" \
            --port "1422$((i + 1))" --http-port "1822$((i + 1))" --server-name "node-$i" \
            --cluster-port "1622$((i + 1))" --routes "${routes%,}" gateway-1 gateway-2 \
            > ".dev/nats/node-$i.conf"
    done
    # The authz-server keeps its own database per topology: a stream of another size needs
    # its history republished, which it does by itself, but keep the single-node data apart.
    export AUTHZ_DATABASE=.dev/authz/authz-cluster.db AUTHZ_STREAM_REPLICAS=3
    export AUTHZ_NATS__URLS='["tls://127.0.0.1:14222","tls://127.0.0.1:14223","tls://127.0.0.1:14224"]'
    export GATEWAY_NATS__URLS=$AUTHZ_NATS__URLS
else
    deploy/nats/render-config.sh --certs .dev/certs --store .dev/nats/store \
        --port "$NATS_PORT" --http-port "$NATS_HTTP" gateway-1 gateway-2 > .dev/nats/nats.conf
fi

NATS_SERVER=${NATS_SERVER:-target/nats-venv/bin/nats-server}
pids=()
stop() {
    trap - EXIT INT TERM
    echo "stopping..." >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until URL answers 200 (or the log file shows NATS ready), for at most 60 s.
wait_for() {
    local what=$1 check=$2
    for _ in $(seq 600); do
        if eval "$check" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "error: $what did not start; see the output above" >&2
    exit 1
}

if [ "$CLUSTER" = 1 ]; then
    for i in 1 2 3; do
        : > ".dev/nats/node-$i.log"
        "$NATS_SERVER" -c ".dev/nats/node-$i.conf" -l ".dev/nats/node-$i.log" & pids+=($!)
    done
    for i in 1 2 3; do
        wait_for "NATS node-$i (log: .dev/nats/node-$i.log)" "grep -q 'metadata leader' .dev/nats/node-$i.log"
    done
else
    : > .dev/nats/nats.log
    "$NATS_SERVER" -c .dev/nats/nats.conf -l .dev/nats/nats.log & pids+=($!)
    wait_for "nats-server (log: .dev/nats/nats.log)" "grep -q 'Server is ready' .dev/nats/nats.log"
fi

target/debug/demo-upstream --listen 127.0.0.1:9001 & pids+=($!)
target/debug/authz-server --config deploy/dev/authz.toml & pids+=($!)
wait_for "authz-server" "curl -sf http://127.0.0.1:8081/readyz"
target/debug/gateway --config deploy/dev/gateway.toml & pids+=($!)
wait_for "gateway" "curl -sf http://127.0.0.1:9090/readyz"

cat <<'TXT'

  The development stack is running (Ctrl-C stops it):
    NATS (mutual TLS)  tls://127.0.0.1:14222   monitoring http://127.0.0.1:18222
    authz-server       http://127.0.0.1:8081   (issuer)   admin http://127.0.0.1:9091
    gateway            http://127.0.0.1:8080   admin http://127.0.0.1:9090
    demo upstream      http://127.0.0.1:9001

  Try it:
    TOKEN=$(curl -s -u demo-client:demo-secret -d grant_type=client_credentials \
              http://127.0.0.1:8081/oauth2/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
    curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/echo/hello
    curl -i -u demo-client:demo-secret -d "token=$TOKEN" http://127.0.0.1:8081/oauth2/revoke
    curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/echo/hello   # 401

TXT
# Stop everything as soon as any one process exits.
wait -n "${pids[@]}"
echo "a process exited; stopping the stack" >&2
exit 1
