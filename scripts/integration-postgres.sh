#!/usr/bin/env bash
# Runs the PostgreSQL saga log's tests (tests/saga_postgres.rs, marked
# `#[ignore = "needs postgres: ..."]`) against a throwaway PostgreSQL server:
# installs the `postgresql` Debian package if no server is found, creates a
# data directory in a temporary folder, starts the server on 127.0.0.1 on a
# free port as a non-root user, with TLS required on TCP (`ssl = on`, a
# certificate for localhost and 127.0.0.1 signed by a throwaway CA made with
# openssl, and only `hostssl` lines in pg_hba.conf), creates a database and a
# role with a password, exports
#   PALISADE_POSTGRES_URL           postgres://palisade@127.0.0.1:<port>/palisade_test
#                                   (no sslmode: libpq's `prefer`, so TLS)
#   PALISADE_POSTGRES_SOCKET_URL    the same database over the Unix socket
#                                   (plain; for the tests' own inspection)
#   PALISADE_POSTGRES_PASSWORD_URL  as PALISADE_POSTGRES_URL, as a role that
#                                   logs in with a (random) password
#   PALISADE_POSTGRES_CA            the CA that signed the server's certificate
#   PALISADE_POSTGRES_OTHER_CA      a CA that did not
# runs the tests and stops the server on exit.
#
# The certificate is made here rather than taken from Debian's snakeoil one
# (package ssl-cert): snakeoil is self-signed for the machine's host name,
# so `verify-full` against 127.0.0.1 could not pass.
#
# Idempotent: nothing outlives the run but the installed package.
# PALISADE_PG_BENCH=1 also runs the append bench (benches/saga_postgres.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

# A directory holding initdb, pg_ctl and postgres of one installation.
find_bindir() {
    local candidates=() dir
    if command -v pg_ctl >/dev/null 2>&1; then
        candidates+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")")
    fi
    if command -v postgres >/dev/null 2>&1; then
        candidates+=("$(dirname "$(readlink -f "$(command -v postgres)")")")
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        candidates+=("$dir")
    done
    for dir in "${candidates[@]}"; do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if ! bindir="$(find_bindir)"; then
    echo "integration-postgres: no PostgreSQL server found, installing the postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q postgresql
    bindir="$(find_bindir)"
fi
echo "integration-postgres: using $("$bindir/postgres" --version) from $bindir"

# PostgreSQL refuses to run as root: use the package's `postgres` user, or
# make one.
run_as=()
if [[ "$(id -u)" == 0 ]]; then
    pg_user=postgres
    if ! id "$pg_user" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
    fi
    run_as=(runuser -u "$pg_user" --)
fi

workdir="$(mktemp -d /tmp/palisade-pg.XXXXXX)"
data="$workdir/data"
started=""
# Server commands run from the work directory: the server's user may not
# be allowed into the current one (a checkout under /root, say).
as_pg() {
    (cd "$workdir" && "${run_as[@]}" "$@")
}
cleanup() {
    if [[ -n "$started" ]]; then
        as_pg "$bindir/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
chmod 755 "$workdir"
if [[ "$(id -u)" == 0 ]]; then
    chown "$pg_user" "$workdir"
fi

as_pg "$bindir/initdb" -D "$data" --username=palisade --auth=trust \
    --encoding=UTF8 --no-locale >"$workdir/initdb.log" 2>&1 \
    || { cat "$workdir/initdb.log"; exit 1; }

# TLS: a CA, a server certificate it signs for localhost and 127.0.0.1, and
# another CA that signs nothing (to check that it is refused).
command -v openssl >/dev/null 2>&1 || { echo "integration-postgres: openssl is needed" >&2; exit 1; }
tls="$workdir/tls"
mkdir "$tls"
make_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$tls/$1.key" -out "$tls/$1.pem" -days 2 -subj "/CN=palisade $1" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1
}
make_ca ca
make_ca other-ca
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$tls/server.key" -out "$tls/server.csr" -subj "/CN=localhost" >/dev/null 2>&1
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" \
    "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" >"$tls/server.ext"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$tls/server.ext" -out "$tls/server.pem" >/dev/null 2>&1
chmod 600 "$tls/server.key"
if [[ "$(id -u)" == 0 ]]; then
    chown -R "$pg_user" "$tls"
fi
chmod 755 "$tls"
chmod 644 "$tls/ca.pem" "$tls/other-ca.pem"

# TCP only with TLS; the password role with SCRAM, everyone else trusted.
cat >"$workdir/pg_hba.conf" <<'HBA'
local   all  all                        trust
hostssl all  palisade_pw  127.0.0.1/32  scram-sha-256
hostssl all  all          127.0.0.1/32  trust
hostssl all  all          ::1/128       trust
HBA
as_pg cp "$workdir/pg_hba.conf" "$data/pg_hba.conf"

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Try a few random ports: another process may take one between the check
# and the start.
port=""
for _ in $(seq 1 10); do
    candidate=$((20000 + RANDOM % 20000))
    port_in_use "$candidate" && continue
    if as_pg "$bindir/pg_ctl" -D "$data" -l "$workdir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $candidate -c unix_socket_directories=$workdir -c max_connections=200 -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key" \
        start >/dev/null; then
        port="$candidate"
        started=1
        break
    fi
done
if [[ -z "$port" ]]; then
    echo "integration-postgres: the server did not start" >&2
    cat "$workdir/server.log" >&2 || true
    exit 1
fi

isready="$bindir/pg_isready"
[[ -x "$isready" ]] || isready="$(command -v pg_isready || true)"
ready=""
for _ in $(seq 1 60); do
    if [[ -n "$isready" ]]; then
        if "$isready" -q -h 127.0.0.1 -p "$port" -U palisade; then
            ready=1
            break
        fi
    elif port_in_use "$port"; then
        ready=1
        break
    fi
    sleep 0.5
done
if [[ -z "$ready" ]]; then
    echo "integration-postgres: the server on port $port is not ready after 30 s" >&2
    cat "$workdir/server.log" >&2 || true
    exit 1
fi

createdb="$bindir/createdb"
if [[ -x "$createdb" ]]; then
    "$createdb" -h 127.0.0.1 -p "$port" -U palisade palisade_test
else
    psql -h 127.0.0.1 -p "$port" -U palisade -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE palisade_test"
fi

psql_bin="$bindir/psql"
[[ -x "$psql_bin" ]] || psql_bin=psql
password="pw-$(openssl rand -hex 12)"
"$psql_bin" -q -h "$workdir" -p "$port" -U palisade -d palisade_test -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE palisade_pw LOGIN PASSWORD '$password'" \
    -c "GRANT ALL ON DATABASE palisade_test TO palisade_pw" >/dev/null

export PALISADE_POSTGRES_URL="postgres://palisade@127.0.0.1:$port/palisade_test"
export PALISADE_POSTGRES_SOCKET_URL="host=$workdir port=$port user=palisade dbname=palisade_test"
export PALISADE_POSTGRES_PASSWORD_URL="postgres://palisade_pw:$password@127.0.0.1:$port/palisade_test"
export PALISADE_POSTGRES_CA="$tls/ca.pem"
export PALISADE_POSTGRES_OTHER_CA="$tls/other-ca.pem"
echo "integration-postgres: server ready at $PALISADE_POSTGRES_URL (TLS required on TCP, CA $PALISADE_POSTGRES_CA)"

cargo test --features postgres --lib saga::log::postgres
cargo test --features postgres --test saga_postgres -- --include-ignored
cargo test --features postgres --test saga_postgres_secrets
if [[ "${PALISADE_PG_BENCH:-}" == 1 ]]; then
    cargo bench --features postgres --bench saga_postgres
fi
