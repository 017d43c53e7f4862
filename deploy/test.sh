#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests against a real
# RabbitMQ (installed and started if needed), plus formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/ensure-rabbitmq.sh
# The reference Standard Webhooks implementation (PyPI), which the tests use
# to check that signed deliveries verify with someone else's code.
if [ ! -x target/test-venv/bin/python ] || ! target/test-venv/bin/python -c 'import standardwebhooks' 2>/dev/null; then
  python3 -m venv target/test-venv
  target/test-venv/bin/pip install --quiet --disable-pip-version-check 'standardwebhooks==1.1.0'
fi
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
