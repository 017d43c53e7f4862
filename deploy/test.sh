#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests against a real
# RabbitMQ (installed and started if needed), plus formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/ensure-rabbitmq.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
