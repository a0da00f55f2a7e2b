#!/usr/bin/env bash
# Runs the etcd discovery tests (tests/discovery_etcd.rs), then the
# e-commerce example's story on etcd (tests/ecommerce.rs), against two real
# etcd servers started on 127.0.0.1 with temporary data dirs and free ports,
# and stops them on exit:
#   * a plain one (http://, no authentication): PALISADE_ETCD;
#   * a secured one: TLS with a CA and certificates made here with openssl,
#     client certificates required (--client-cert-auth), and etcd
#     authentication on (user root, a random password): PALISADE_ETCD_TLS,
#     PALISADE_ETCD_TLS_DIR (ca.pem, client.pem, client-key.pem and
#     other-ca.pem, a CA that signed nothing here), PALISADE_ETCD_USER and
#     PALISADE_ETCD_PASSWORD.
# Installs etcd-server, etcd-client (etcdctl), openssl and protobuf-compiler
# (Debian) when missing. Extra arguments go to the test binary, e.g. a test
# name filter.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A port nothing listens on (and that differs from $1, if given).
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        if [[ "$port" != "${1:-}" ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# etcd 3.4 refuses to start on architectures other than amd64 unless told.
case "$(uname -m)" in
    x86_64) ;;
    aarch64) export ETCD_UNSUPPORTED_ARCH=arm64 ;;
    *) export ETCD_UNSUPPORTED_ARCH="$(uname -m)" ;;
esac

work_dir=$(mktemp -d -t palisade-etcd.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work_dir"
}
trap cleanup EXIT

# The certificates of the secured etcd: a CA, a server certificate for
# 127.0.0.1 and localhost, a client certificate, and a second CA that signed
# nothing (for the tests that expect an untrusted server to be refused).
tls_dir="$work_dir/tls"
mkdir -p "$tls_dir"
make_ca() { # name
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tls_dir/$1-key.pem" -out "$tls_dir/$1.pem" -days 2 \
        -subj "/CN=palisade test $1" 2>/dev/null
}
sign() { # name, subject, extensions
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tls_dir/$1-key.pem" -out "$tls_dir/$1.csr" -subj "$2" 2>/dev/null
    printf '%b' "$3" >"$tls_dir/$1.ext"
    openssl x509 -req -in "$tls_dir/$1.csr" -CA "$tls_dir/ca.pem" -CAkey "$tls_dir/ca-key.pem" \
        -CAcreateserial -days 2 -out "$tls_dir/$1.pem" -extfile "$tls_dir/$1.ext" 2>/dev/null
}
make_ca ca
make_ca other-ca
sign server "/CN=localhost" \
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n'
sign client "/CN=palisade-client" \
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n'

# Starts etcd NAME with its client URL and peer port and any extra options;
# its log is $work_dir/NAME.log.
start_etcd() { # name, client url, peer port, extra options...
    local name=$1 client_url=$2 peer_port=$3
    shift 3
    etcd --name "$name" \
        --data-dir "$work_dir/$name" \
        --listen-client-urls "$client_url" \
        --advertise-client-urls "$client_url" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "$name=http://127.0.0.1:$peer_port" \
        "$@" >"$work_dir/$name.log" 2>&1 &
    pids+=($!)
}

# Waits (at most 30 s) until `etcdctl ARGS endpoint health` succeeds.
wait_healthy() { # name, etcdctl options...
    local name=$1
    shift
    for _ in $(seq 1 300); do
        if ETCDCTL_API=3 etcdctl "$@" --command-timeout=1s endpoint health >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "etcd $name did not become healthy within 30 s:" >&2
    cat "$work_dir/$name.log" >&2
    exit 1
}

plain_port=$(free_port)
plain_peer=$(free_port "$plain_port")
start_etcd palisade-plain "http://127.0.0.1:$plain_port" "$plain_peer"
wait_healthy palisade-plain --endpoints "http://127.0.0.1:$plain_port"
echo "plain etcd is healthy on 127.0.0.1:$plain_port" >&2

tls_port=$(free_port "$plain_port")
tls_peer=$(free_port "$tls_port")
start_etcd palisade-tls "https://127.0.0.1:$tls_port" "$tls_peer" \
    --cert-file "$tls_dir/server.pem" --key-file "$tls_dir/server-key.pem" \
    --client-cert-auth --trusted-ca-file "$tls_dir/ca.pem"
tls_ctl=(--endpoints "https://127.0.0.1:$tls_port" --cacert "$tls_dir/ca.pem"
    --cert "$tls_dir/client.pem" --key "$tls_dir/client-key.pem")
wait_healthy palisade-tls "${tls_ctl[@]}"
password=$(openssl rand -hex 16)
# The password goes through stdin, not the command line.
printf '%s\n' "$password" |
    ETCDCTL_API=3 etcdctl "${tls_ctl[@]}" user add root --interactive=false >/dev/null
ETCDCTL_API=3 etcdctl "${tls_ctl[@]}" user grant-role root root >/dev/null
ETCDCTL_API=3 etcdctl "${tls_ctl[@]}" auth enable >/dev/null
echo "TLS etcd with authentication is healthy on 127.0.0.1:$tls_port" >&2

export PALISADE_ETCD="http://127.0.0.1:$plain_port"
export PALISADE_ETCD_TLS="https://127.0.0.1:$tls_port"
export PALISADE_ETCD_TLS_DIR="$tls_dir"
export PALISADE_ETCD_USER=root
export PALISADE_ETCD_PASSWORD="$password"
cargo test ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"} --features etcd --test discovery_etcd -- --include-ignored "$@"
# The e-commerce example's story with its services registered in the plain
# etcd (tests/ecommerce.rs, "needs etcd").
cargo test ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"} --features etcd --test ecommerce -- --ignored etcd_registry
