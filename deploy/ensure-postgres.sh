#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests of the PostgreSQL
# store (several authz-server replicas on one database). If none answers: installs Debian's
# postgresql package where apt-get exists, starts the existing cluster or creates one, and
# lets the user postgres in with the password "postgres" over loopback. The tests create and
# drop their own databases; set REVGATE_TEST_POSTGRES to use another server.
set -euo pipefail

url=${REVGATE_TEST_POSTGRES:-}
[ -z "$url" ] || exit 0

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
command -v pg_isready >/dev/null 2>&1 && ready && exit 0

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: no PostgreSQL on 127.0.0.1:5432 and no apt-get; install PostgreSQL or set REVGATE_TEST_POSTGRES" >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing postgresql with apt-get" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
ready && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    $sudo pg_createcluster "$version" main --port 5432 >/dev/null
fi
cluster=$(pg_lsclusters -h | awk '$3 == 5432 {print $1" "$2; exit}')
[ -n "$cluster" ] || { echo "error: no PostgreSQL cluster on port 5432 to start" >&2; exit 1; }
# shellcheck disable=SC2086
$sudo pg_ctlcluster --skip-systemctl-redirect $cluster start >/dev/null 2>&1 || $sudo pg_ctlcluster $cluster start
for _ in $(seq 100); do ready && break; sleep 0.2; done
ready || { echo "error: PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
# Password login over loopback for the tests (Debian's default for host connections).
if [ "$(id -u)" -eq 0 ]; then
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
else
    sudo -u postgres psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
fi
