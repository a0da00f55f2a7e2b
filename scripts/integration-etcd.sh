#!/usr/bin/env bash
# Runs the etcd discovery tests (tests/discovery_etcd.rs) against a real etcd
# started on 127.0.0.1 with a temporary data dir and free ports; stops it on
# exit. Installs etcd-server and protobuf-compiler (Debian) when missing.
# Extra arguments go to the test binary, e.g. a test name filter.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
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

client_port=$(free_port)
peer_port=$(free_port "$client_port")
work_dir=$(mktemp -d -t palisade-etcd.XXXXXX)
log="$work_dir/etcd.log"

etcd --name palisade-test \
    --data-dir "$work_dir/data" \
    --listen-client-urls "http://127.0.0.1:$client_port" \
    --advertise-client-urls "http://127.0.0.1:$client_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "palisade-test=http://127.0.0.1:$peer_port" \
    >"$log" 2>&1 &
etcd_pid=$!

cleanup() {
    kill "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
    rm -rf "$work_dir"
}
trap cleanup EXIT

healthy() {
    exec 3<>"/dev/tcp/127.0.0.1/$client_port" || return 1
    printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    grep -q '"health":"true"' <&3
}

# Wait (at most 30 s) until etcd answers healthy.
for _ in $(seq 1 300); do
    if (healthy) 2>/dev/null; then
        break
    fi
    if ! kill -0 "$etcd_pid" 2>/dev/null; then
        echo "etcd exited early:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
if ! (healthy) 2>/dev/null; then
    echo "etcd did not become healthy within 30 s:" >&2
    cat "$log" >&2
    exit 1
fi
echo "etcd is healthy on 127.0.0.1:$client_port" >&2

export PALISADE_ETCD="http://127.0.0.1:$client_port"
cargo test ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"} --features etcd --test discovery_etcd -- --include-ignored "$@"
