#!/usr/bin/env bash
# Model-checks palisade's lock-free structures with loom: every interleaving
# of the threads in the `loom_tests` modules is explored.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg palisade_loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
cargo test --release --lib loom_tests -- --test-threads=1
