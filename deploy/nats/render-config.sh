#!/usr/bin/env bash
# render-config.sh --certs DIR --store DIR --port P [--http-port P]
#                  [--server-name NAME] [--cluster-port P --routes HOST:P,HOST:P]
#                  [GATEWAY_IDENTITY ...]
#
# Prints a nats-server config (2.15.1, the version tested and the minimum supported) to stdout
# for the revgate dev/test setup:
#   * listens on 127.0.0.1 only; mutual TLS required, users mapped from the client
#     certificate's email SAN (verify_and_map), no anonymous/password users;
#   * JetStream enabled (store_dir = --store);
#   * four accounts (see the comment above `accounts` below): the two streams each in an
#     account nobody logs in to, the user authz@revgate.local in AUTHZ, and
#     <gateway>@revgate.local for every gateway identity (default: gateway-1 gateway-2) in
#     GW, which imports only what reading needs.
#
# Options:
#   --certs DIR        directory produced by certs/make-dev-certs.sh (required)
#   --store DIR        JetStream store_dir (required)
#   --port P           client port (required); -1 = random port (see the
#                      "Listening for client connections on 127.0.0.1:<port>" log line)
#   --http-port P      monitoring port on 127.0.0.1, default 0 = no monitoring;
#                      -1 = random port (see "Starting http monitor on 127.0.0.1:<port>")
#   --server-name NAME server_name, default nats-dev (must differ per cluster node)
#   --cluster-port P   join a cluster: route listener on 127.0.0.1:P (mutual TLS, same CA; only
#                      the servers' own certificate, subject CN=nats-server, may be a route)
#   --routes LIST      comma-separated HOST:PORT route listeners of the other nodes
set -euo pipefail

die() { echo "render-config: error: $*" >&2; exit 1; }
usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

CERTS='' STORE='' PORT='' HTTP_PORT=0 SERVER_NAME=nats-dev CLUSTER_PORT='' ROUTES=''

GATEWAYS=()
while [ $# -gt 0 ]; do
    case $1 in
        --certs) [ $# -ge 2 ] || die "--certs needs a value"; CERTS=$2; shift 2 ;;
        --store) [ $# -ge 2 ] || die "--store needs a value"; STORE=$2; shift 2 ;;
        --port) [ $# -ge 2 ] || die "--port needs a value"; PORT=$2; shift 2 ;;
        --http-port) [ $# -ge 2 ] || die "--http-port needs a value"; HTTP_PORT=$2; shift 2 ;;
        --server-name) [ $# -ge 2 ] || die "--server-name needs a value"; SERVER_NAME=$2; shift 2 ;;
        --cluster-port) [ $# -ge 2 ] || die "--cluster-port needs a value"; CLUSTER_PORT=$2; shift 2 ;;
        --routes) [ $# -ge 2 ] || die "--routes needs a value"; ROUTES=$2; shift 2 ;;
        --certs=*) CERTS=${1#*=}; shift ;;
        --store=*) STORE=${1#*=}; shift ;;
        --port=*) PORT=${1#*=}; shift ;;
        --http-port=*) HTTP_PORT=${1#*=}; shift ;;
        --server-name=*) SERVER_NAME=${1#*=}; shift ;;
        --cluster-port=*) CLUSTER_PORT=${1#*=}; shift ;;
        --routes=*) ROUTES=${1#*=}; shift ;;
        -h | --help) usage ;;
        --) shift; GATEWAYS+=("$@"); break ;;
        -*) die "unknown option $1" ;;
        *) GATEWAYS+=("$1"); shift ;;
    esac
done
[ ${#GATEWAYS[@]} -gt 0 ] || GATEWAYS=(gateway-1 gateway-2)

[ -n "$CERTS" ] || die "--certs DIR is required"
[ -n "$STORE" ] || die "--store DIR is required"
[ -n "$PORT" ] || die "--port P is required (-1 = random)"
is_port() { [[ $1 =~ ^(-1|[0-9]+)$ ]] && [ "$1" -le 65535 ]; }
{ is_port "$PORT" && [ "$PORT" != 0 ]; } || die "--port must be 1-65535 or -1 (random), got '$PORT'"
is_port "$HTTP_PORT" || die "--http-port must be 0 (off), 1-65535 or -1 (random), got '$HTTP_PORT'"
[[ $SERVER_NAME =~ ^[A-Za-z0-9_-]+$ ]] || die "invalid --server-name '$SERVER_NAME'"
if [ -n "$CLUSTER_PORT" ]; then
    [[ $CLUSTER_PORT =~ ^[0-9]+$ ]] && [ "$CLUSTER_PORT" -ge 1 ] && [ "$CLUSTER_PORT" -le 65535 ] \
        || die "--cluster-port must be 1-65535, got '$CLUSTER_PORT'"
    [[ $ROUTES =~ ^[A-Za-z0-9.-]+:[0-9]+(,[A-Za-z0-9.-]+:[0-9]+)*$ ]] \
        || die "--routes must be HOST:PORT[,HOST:PORT...], got '$ROUTES'"
elif [ -n "$ROUTES" ]; then
    die "--routes needs --cluster-port"
fi
for gw in "${GATEWAYS[@]}"; do
    [[ $gw =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "invalid gateway identity '$gw'"
    [ "$gw" != authz ] || die "'authz' is not a gateway identity"
done

[ -d "$CERTS" ] || die "certs dir '$CERTS' does not exist (run certs/make-dev-certs.sh first)"
CERTS=$(cd -- "$CERTS" && pwd -P)
for f in ca.pem nats-server.pem nats-server-key.pem; do
    [ -s "$CERTS/$f" ] || die "missing $CERTS/$f (run certs/make-dev-certs.sh first)"
done
case $STORE in /*) ;; *) STORE=$PWD/$STORE ;; esac
for p in "$CERTS" "$STORE"; do
    case $p in *[\"\\$'\n']*) die "path '$p' must not contain quotes, backslashes or newlines" ;; esac
done

STREAM=AUTHZ_REVOCATIONS
SNAPSHOTS=AUTHZ_REVOCATION_SNAPSHOTS
DOMAIN=revgate.local

cat <<EOF
# GENERATED FILE - DO NOT EDIT.
# Rendered by deploy/nats/render-config.sh (revgate dev/test NATS server)
# for gateway identities: ${GATEWAYS[*]}

server_name: "$SERVER_NAME"
host: "127.0.0.1"
port: $PORT
EOF
if [ "$HTTP_PORT" != 0 ]; then
    echo "# monitoring, loopback only"
    echo "http: \"127.0.0.1:$HTTP_PORT\""
fi
cat <<EOF

# Mutual TLS; the user is the client certificate's email SAN.
tls {
  cert_file: "$CERTS/nats-server.pem"
  key_file: "$CERTS/nats-server-key.pem"
  ca_file: "$CERTS/ca.pem"
  verify_and_map: true
  timeout: 2
}

jetstream {
  store_dir: "$STORE"
  max_mem: 256MB
  max_file: 1GB
}
EOF
if [ -n "$CLUSTER_PORT" ]; then
    echo
    echo "# Cluster routes: mutual TLS with the same CA, and only a server may be a route: the"
    echo "# route's certificate must map to the one route user, the servers' subject CN=nats-server."
    echo "# A client certificate of the same CA (a gateway's, authz's) is refused: route traffic"
    echo "# bypasses every client permission."
    echo "cluster {"
    echo "  name: \"revgate\""
    echo "  listen: \"127.0.0.1:$CLUSTER_PORT\""
    echo "  routes: ["
    IFS=, read -ra route_list <<< "$ROUTES"
    for route in "${route_list[@]}"; do
        echo "    \"nats-route://$route\""
    done
    echo "  ]"
    echo "  authorization { user: \"CN=nats-server\" }"
    echo "  tls {"
    echo "    cert_file: \"$CERTS/nats-server.pem\""
    echo "    key_file: \"$CERTS/nats-server-key.pem\""
    echo "    ca_file: \"$CERTS/ca.pem\""
    echo "    verify_and_map: true"
    echo "    timeout: 2"
    echo "  }"
    echo "}"
fi
REV_PREFIX=JS.REV.API
SNAP_PREFIX=JS.SNAP.API

# Four accounts (see "Threat model" in the README):
#   REV   the revocation stream, and nobody: no user logs in to it;
#   SNAP  the snapshot stream, and nobody;
#   AUTHZ the authz-server: the whole JetStream API of REV and SNAP (imported under
#         $REV_PREFIX and $SNAP_PREFIX), publishing into both streams, and the heartbeats;
#   GW    the gateways: only what reading needs (pull consumers of the revocation stream,
#         reading the snapshot stream) and the heartbeats; each publishes its own status
#         (gateway.status.v1.<identity>, exported to AUTHZ only) and reads nobody's.
# A JetStream API response or a push consumer's delivery stays in the account of the stream:
# no reply subject and no deliver subject a gateway chooses can reach an API, an inbox, the
# heartbeats or the snapshot stream. Gateways can neither delete nor list consumers, so the
# random name of one gateway's consumer is never known to another.
cat <<EOF

accounts {
  REV: {
    jetstream: enabled
    exports: [
      { service: "\$JS.API.>", accounts: [AUTHZ], response_type: stream }
      { service: "authz.revocations.v1.>", accounts: [AUTHZ] }
      { service: "\$JS.API.INFO", accounts: [GW] }
      { service: "\$JS.API.STREAM.INFO.$STREAM", accounts: [GW] }
      { service: "\$JS.API.CONSUMER.CREATE.$STREAM", accounts: [GW] }
      { service: "\$JS.API.CONSUMER.CREATE.$STREAM.>", accounts: [GW] }
      { service: "\$JS.API.CONSUMER.INFO.$STREAM.*", accounts: [GW] }
      { service: "\$JS.API.CONSUMER.MSG.NEXT.$STREAM.*", accounts: [GW], response_type: stream }
    ]
  }
  SNAP: {
    jetstream: enabled
    exports: [
      { service: "\$JS.API.>", accounts: [AUTHZ], response_type: stream }
      { service: "authz.snapshots.v1.>", accounts: [AUTHZ] }
      { service: "\$JS.API.STREAM.MSG.GET.$SNAPSHOTS", accounts: [GW] }
    ]
  }
  AUTHZ: {
    imports: [
      { service: { account: REV, subject: "\$JS.API.>" }, to: "$REV_PREFIX.>" }
      { service: { account: REV, subject: "authz.revocations.v1.>" } }
      { service: { account: SNAP, subject: "\$JS.API.>" }, to: "$SNAP_PREFIX.>" }
      { service: { account: SNAP, subject: "authz.snapshots.v1.>" } }
      { stream: { account: GW, subject: "gateway.status.v1.*" } }
    ]
    exports: [
      { stream: "authz.heartbeat.v1", accounts: [GW] }
    ]
    users: [
      {
        user: "authz@$DOMAIN"
        permissions: {
          publish: {
            allow: [
              "authz.revocations.v1.>"
              "authz.snapshots.v1.>"
              "authz.heartbeat.v1"
              "$REV_PREFIX.>"
              "$SNAP_PREFIX.>"
            ]
          }
          subscribe: { allow: [ "_INBOX_authz.>", "gateway.status.v1.*" ] }
        }
      }
    ]
  }
  GW: {
    imports: [
      { service: { account: REV, subject: "\$JS.API.INFO" }, to: "$REV_PREFIX.INFO" }
      { service: { account: REV, subject: "\$JS.API.STREAM.INFO.$STREAM" }, to: "$REV_PREFIX.STREAM.INFO.$STREAM" }
      { service: { account: REV, subject: "\$JS.API.CONSUMER.CREATE.$STREAM" }, to: "$REV_PREFIX.CONSUMER.CREATE.$STREAM" }
      { service: { account: REV, subject: "\$JS.API.CONSUMER.CREATE.$STREAM.>" }, to: "$REV_PREFIX.CONSUMER.CREATE.$STREAM.>" }
      { service: { account: REV, subject: "\$JS.API.CONSUMER.INFO.$STREAM.*" }, to: "$REV_PREFIX.CONSUMER.INFO.$STREAM.*" }
      { service: { account: REV, subject: "\$JS.API.CONSUMER.MSG.NEXT.$STREAM.*" }, to: "$REV_PREFIX.CONSUMER.MSG.NEXT.$STREAM.*" }
      { service: { account: SNAP, subject: "\$JS.API.STREAM.MSG.GET.$SNAPSHOTS" }, to: "$SNAP_PREFIX.STREAM.MSG.GET.$SNAPSHOTS" }
      { stream: { account: AUTHZ, subject: "authz.heartbeat.v1" } }
    ]
    exports: [
      { stream: "gateway.status.v1.*", accounts: [AUTHZ] }
    ]
    # Gateways publish only requests to the imported APIs (anything else under the prefixes
    # has no responder) and their own status, and subscribe only to their own inbox and the
    # heartbeats.
    users: [
EOF
for gw in "${GATEWAYS[@]}"; do
    cat <<EOF
      {
        user: "$gw@$DOMAIN"
        permissions: {
          publish: { allow: [ "$REV_PREFIX.>", "$SNAP_PREFIX.>", "gateway.status.v1.$gw" ] }
          subscribe: { allow: [ "_INBOX_$gw.>", "authz.heartbeat.v1" ] }
        }
      }
EOF
done
cat <<EOF
    ]
  }
}
EOF
