#!/usr/bin/env bash
# make-dev-certs.sh OUT_DIR [IDENTITY ...]
#
# Creates a development PKI (EC P-256, openssl) for the local NATS server:
#   ca.pem / ca-key.pem                    self-signed CA "revgate dev CA" (10 years)
#   nats-server.pem / nats-server-key.pem  SAN DNS:localhost, IP:127.0.0.1;
#                                          EKU serverAuth+clientAuth (825 days)
#   upstream.pem / upstream-key.pem        an upstream service reached over TLS: SAN
#                                          DNS:localhost, IP:127.0.0.1; EKU serverAuth
#   <name>.pem / <name>-key.pem            client certs for "authz" and every IDENTITY
#                                          (default: gateway-1 gateway-2); CN=<name>,
#                                          email SAN <name>@revgate.local, EKU clientAuth
# With MAKE_BAD_CERTS=1 also certs for negative tests, signed by the same CA:
#   bad-eku   email SAN gateway-1@revgate.local, EKU serverAuth only
#   expired   email SAN gateway-1@revgate.local, clientAuth, validity in the past
#   unknown   email SAN stranger@revgate.local, clientAuth
#
# Idempotent: an existing CA is reused; an existing cert is kept as long as it is
# signed by the current CA (and, except for "expired", valid for at least one more
# day). Only missing/stale files are (re)created; one line per created file goes
# to stderr. Development use only: never commit the output.
set -euo pipefail

die() { echo "make-dev-certs: error: $*" >&2; exit 1; }
# shellcheck disable=SC2154  # rc is assigned inside the trap string
trap 'rc=$?; echo "make-dev-certs: error: command failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; exit $rc' ERR

[ $# -ge 1 ] || die "usage: $0 OUT_DIR [IDENTITY ...]"
OUT=$1
shift
if [ $# -gt 0 ]; then IDENTITIES=("$@"); else IDENTITIES=(gateway-1 gateway-2); fi
EMAIL_DOMAIN=revgate.local

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"
for id in "${IDENTITIES[@]}"; do
    [[ $id =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "invalid identity name '$id' (allowed: letters, digits, '.', '_', '-')"
    case $id in
        ca | nats-server) die "identity name '$id' is reserved" ;;
    esac
done

umask 077
mkdir -p -- "$OUT" 2>/dev/null || die "cannot create $OUT"
chmod 700 -- "$OUT"

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT

created() { echo "created $OUT/$1" >&2; }

new_key() { # path
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>"$TMP/err" ||
        die "openssl genpkey failed for $1: $(cat "$TMP/err")"
    chmod 600 -- "$1"
}

# ---------------------------------------------------------------- CA
CA=$OUT/ca.pem
CA_KEY=$OUT/ca-key.pem
if [ -e "$CA" ] || [ -e "$CA_KEY" ]; then
    { [ -s "$CA" ] && [ -s "$CA_KEY" ]; } || die "only one of $CA / $CA_KEY exists; remove it to recreate the CA"
    chmod 600 -- "$CA_KEY"
else
    new_key "$TMP/ca-key.pem"
    openssl req -new -x509 -key "$TMP/ca-key.pem" -sha256 -days 3650 \
        -subj "/CN=revgate dev CA" \
        -addext "basicConstraints=critical,CA:true" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$TMP/ca.pem" 2>"$TMP/err" || die "creating CA failed: $(cat "$TMP/err")"
    chmod 644 -- "$TMP/ca.pem"
    mv -- "$TMP/ca-key.pem" "$CA_KEY" && created ca-key.pem
    mv -- "$TMP/ca.pem" "$CA" && created ca.pem
fi

# is_current NAME [expired]: cert+key exist, cert is signed by the current CA
# and (unless "expired") still valid for at least a day.
is_current() {
    local crt=$OUT/$1.pem key=$OUT/$1-key.pem
    [ -s "$crt" ] && [ -s "$key" ] || return 1
    openssl verify -no_check_time -CAfile "$CA" "$crt" >/dev/null 2>&1 || return 1
    if [ "${2:-}" != expired ]; then
        openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1 || return 1
    fi
    # key must match the cert
    [ "$(openssl x509 -in "$crt" -noout -pubkey 2>/dev/null)" = \
        "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ] || return 1
    chmod 600 -- "$key"
    return 0
}

# issue NAME CN EXT_LINES...  (signed with openssl x509 -req, 825 days)
issue() {
    local name=$1 cn=$2
    shift 2
    is_current "$name" && return 0
    printf '%s\n' "[ext]" "basicConstraints=critical,CA:false" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" "$@" >"$TMP/$name.ext"
    new_key "$TMP/$name-key.pem"
    openssl req -new -key "$TMP/$name-key.pem" -subj "/CN=$cn" -out "$TMP/$name.csr" 2>"$TMP/err" ||
        die "creating CSR for $name failed: $(cat "$TMP/err")"
    openssl x509 -req -in "$TMP/$name.csr" -CA "$CA" -CAkey "$CA_KEY" \
        -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 825 \
        -extfile "$TMP/$name.ext" -extensions ext -out "$TMP/$name.pem" 2>"$TMP/err" ||
        die "signing cert for $name failed: $(cat "$TMP/err")"
    chmod 644 -- "$TMP/$name.pem"
    mv -- "$TMP/$name-key.pem" "$OUT/$name-key.pem" && created "$name-key.pem"
    mv -- "$TMP/$name.pem" "$OUT/$name.pem" && created "$name.pem"
}

# issue_expired NAME CN EXT_LINES...  (openssl ca with explicit dates in the past;
# openssl 3.0's "x509 -req" cannot set notBefore/notAfter)
issue_expired() {
    local name=$1 cn=$2
    shift 2
    is_current "$name" expired && return 0
    local db=$TMP/ca-db
    mkdir -p "$db/new"
    : >"$db/index.txt"
    openssl rand -hex 16 >"$db/serial"
    cat >"$db/ca.cnf" <<EOF
[ ca ]
default_ca = dev_ca
[ dev_ca ]
database        = $db/index.txt
serial          = $db/serial
new_certs_dir   = $db/new
certificate     = $CA
private_key     = $CA_KEY
default_md      = sha256
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no
[ policy_any ]
commonName      = supplied
[ ext ]
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature,keyEncipherment
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
$(printf '%s\n' "$@")
EOF
    new_key "$TMP/$name-key.pem"
    openssl req -new -key "$TMP/$name-key.pem" -subj "/CN=$cn" -out "$TMP/$name.csr" 2>"$TMP/err" ||
        die "creating CSR for $name failed: $(cat "$TMP/err")"
    openssl ca -batch -config "$db/ca.cnf" -extensions ext -notext \
        -startdate 20200101000000Z -enddate 20210101000000Z \
        -in "$TMP/$name.csr" -out "$TMP/$name.pem" >/dev/null 2>"$TMP/err" ||
        die "signing expired cert for $name failed: $(cat "$TMP/err")"
    chmod 644 -- "$TMP/$name.pem"
    mv -- "$TMP/$name-key.pem" "$OUT/$name-key.pem" && created "$name-key.pem"
    mv -- "$TMP/$name.pem" "$OUT/$name.pem" && created "$name.pem"
}

# ---------------------------------------------------------------- server
issue nats-server nats-server \
    "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth,clientAuth"

issue upstream upstream \
    "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth"

# ---------------------------------------------------------------- clients
declare -A seen=()
for id in authz "${IDENTITIES[@]}"; do
    [ -z "${seen[$id]:-}" ] || continue
    seen[$id]=1
    issue "$id" "$id" \
        "subjectAltName=email:$id@$EMAIL_DOMAIN" \
        "extendedKeyUsage=clientAuth"
done

# ---------------------------------------------------------------- negative-test certs
if [ "${MAKE_BAD_CERTS:-0}" = 1 ]; then
    issue bad-eku bad-eku \
        "subjectAltName=email:gateway-1@$EMAIL_DOMAIN" \
        "extendedKeyUsage=serverAuth"
    issue_expired expired expired \
        "subjectAltName=email:gateway-1@$EMAIL_DOMAIN" \
        "extendedKeyUsage=clientAuth"
    issue unknown unknown \
        "subjectAltName=email:stranger@$EMAIL_DOMAIN" \
        "extendedKeyUsage=clientAuth"
fi
