#!/usr/bin/env bash
# One command to try hookwire: RabbitMQ (installed and started if needed), a
# debug destination on 127.0.0.1:9000, and hookwire on config/hookwire.toml.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/ensure-rabbitmq.sh
cargo build --release --locked
bin=target/release/hookwire
"$bin" check --config config/hookwire.toml >/dev/null

"$bin" sink --listen 127.0.0.1:9000 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT

echo
echo "hookwire: ingress http://127.0.0.1:8080/webhooks/{source}, admin http://127.0.0.1:9090"
echo "try, in another terminal:"
echo "  target/release/hookwire sign --config config/hookwire.toml --source acme --body examples/invoice.json --curl | sh"
echo
"$bin" serve --config config/hookwire.toml "$@"
