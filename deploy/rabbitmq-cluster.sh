#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, beside its own broker (5672),
# for the cluster tests and the chaos harness, and for people trying
# hookwire on a cluster without containers (issue 11).
#
#   deploy/rabbitmq-cluster.sh start     start hookwire-c1..c3 (idempotent), join them, wait until clustered
#   deploy/rabbitmq-cluster.sh stop      stop every node and delete its data
#   deploy/rabbitmq-cluster.sh kill N    kill -9 node N (1..3): what a crashed host does
#   deploy/rabbitmq-cluster.sh revive N  start node N again on its old data; it rejoins by itself
#   deploy/rabbitmq-cluster.sh status    the cluster as node 1 sees it
#   deploy/rabbitmq-cluster.sh urls      the AMQP URLs, one per node, as hookwire's rabbitmq.url takes them
#
# Node N is hookwire-cN@localhost with AMQP on 127.0.0.1:$((BASE_PORT + N))
# (default 5690: 5691, 5692, 5693) and Erlang distribution 20000 above it.
# Every node runs as the rabbitmq user from the Debian install, with its own
# data under ${HOOKWIRE_NODES_DIR:-/tmp/hookwire-rabbitmq} (see rabbitmq-node.sh).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NODE="$HERE/rabbitmq-node.sh"
BASE_PORT="${HOOKWIRE_CLUSTER_BASE_PORT:-5690}"
BASE="${HOOKWIRE_NODES_DIR:-/tmp/hookwire-rabbitmq}"

usage() { sed -n '2,17p' "$0" >&2; exit 2; }
name() { echo "hookwire-c$1"; }
port() { echo $((BASE_PORT + $1)); }

# Whether node N already belongs to node 1's cluster.
joined() {
  "$NODE" ctl "$(name 1)" cluster_status --formatter json 2>/dev/null |
    grep -q "\"$(name "$1")@localhost\""
}

start() {
  for n in 1 2 3; do "$NODE" start "$(name "$n")" "$(port "$n")"; done
  for n in 2 3; do
    if joined "$n"; then continue; fi
    "$NODE" ctl "$(name "$n")" stop_app >/dev/null
    "$NODE" ctl "$(name "$n")" join_cluster "$(name 1)@localhost" >/dev/null
    "$NODE" ctl "$(name "$n")" start_app >/dev/null
    echo "rabbitmq cluster: $(name "$n") joined $(name 1)"
  done
  # Every node running, as node 1 sees it.
  for _ in $(seq 1 60); do
    local running
    running=$("$NODE" ctl "$(name 1)" cluster_status --formatter json 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("running_nodes", [])))' 2>/dev/null || echo 0)
    if [ "$running" = 3 ]; then
      echo "rabbitmq cluster: 3 nodes running; $(urls | tr '\n' ' ')"
      return
    fi
    sleep 1
  done
  echo "rabbitmq cluster: not every node is running" >&2
  exit 1
}

stop() {
  for n in 3 2 1; do "$NODE" stop "$(name "$n")"; done
}

kill_node() {
  local n=$1 pid
  pid=$(cat "$BASE/$(name "$n")/pid")
  kill -9 "$pid"
  echo "rabbitmq cluster: killed $(name "$n") (pid $pid)"
}

# Starts a killed node on its data: it was a cluster member and rejoins.
revive() {
  "$NODE" start "$(name "$1")" "$(port "$1")"
}

urls() {
  for n in 1 2 3; do echo "amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"; done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) [ $# -eq 2 ] || usage; kill_node "$2" ;;
  revive) [ $# -eq 2 ] || usage; revive "$2" ;;
  status) "$NODE" ctl "$(name 1)" cluster_status ;;
  urls) urls ;;
  *) usage ;;
esac
