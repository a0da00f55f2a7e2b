#!/usr/bin/env bash
# Runs the e-commerce example's choreography tests over a real RabbitMQ
# (the tests in tests/ecommerce.rs marked "needs rabbitmq"): starts a
# broker node of its own on 127.0.0.1 with a free AMQP port, a temporary
# data dir and its own node name, exports PALISADE_AMQP, runs the tests and
# stops the node on exit. Installs Debian's rabbitmq-server when missing
# (no systemd needed: the node runs in the background as the rabbitmq
# user). Extra arguments go to the test binary, e.g. a test name filter.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "installing rabbitmq-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
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

amqp_port=$(free_port)
dist_port=$(free_port "$amqp_port")
work_dir=$(mktemp -d -t palisade-rabbitmq.XXXXXX)
node="palisade-$$@localhost"

# The node's settings; the Debian wrappers run rabbitmq-server and
# rabbitmqctl as the rabbitmq user and keep these variables.
export RABBITMQ_NODENAME="$node"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$amqp_port"
export RABBITMQ_DIST_PORT="$dist_port"
export RABBITMQ_MNESIA_BASE="$work_dir/mnesia"
export RABBITMQ_LOG_BASE="$work_dir/log"
export RABBITMQ_PID_FILE="$work_dir/node.pid"
export RABBITMQ_ENABLED_PLUGINS_FILE="$work_dir/enabled_plugins"
mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
if id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq: "$work_dir"
fi
chmod 755 "$work_dir"

# Erlang's port mapper daemon starts with the first node; stopped on exit
# if this script started it (`epmd -kill` refuses while nodes remain).
epmd_was_running=false
if epmd -names >/dev/null 2>&1; then epmd_was_running=true; fi
started=false
cleanup() {
    if $started; then
        # With the pid file, stop waits until the node process has exited.
        rabbitmqctl -n "$node" stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || true
    fi
    if ! $epmd_was_running; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    rm -rf "$work_dir"
}
trap cleanup EXIT

rabbitmq-server -detached
started=true

# Waits (at most 60 s) for the node to boot and its AMQP port to listen.
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    if rabbitmqctl -n "$node" await_startup --timeout 1 >/dev/null 2>&1 &&
        (exec 3<>"/dev/tcp/127.0.0.1/$amqp_port") 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if ! (exec 3<>"/dev/tcp/127.0.0.1/$amqp_port") 2>/dev/null; then
    echo "RabbitMQ did not start within 60 s:" >&2
    cat "$work_dir"/log/*.log >&2 || true
    exit 1
fi
echo "RabbitMQ node $node is up on 127.0.0.1:$amqp_port" >&2

export PALISADE_AMQP="amqp://127.0.0.1:$amqp_port/%2f"
cargo test ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"} --test ecommerce -- --ignored rabbitmq "$@"
