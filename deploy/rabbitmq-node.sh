#!/usr/bin/env bash
# Runs an extra RabbitMQ node beside the machine's own (rabbit@localhost on
# 5672), for tests that must do something to a broker that other tests must
# not feel: raise a resource alarm, kill it, cluster it.
#
#   deploy/rabbitmq-node.sh start NAME AMQP_PORT   start NAME@localhost (idempotent), wait until it answers
#   deploy/rabbitmq-node.sh stop NAME              stop it and delete its data
#   deploy/rabbitmq-node.sh restart NAME           stop it, keeping its data, and start it again
#   deploy/rabbitmq-node.sh ctl NAME ARGS...       rabbitmqctl against it
#
# Each node has its own data and log directories under
# ${HOOKWIRE_NODES_DIR:-/tmp/hookwire-rabbitmq}/NAME, its own config (AMQP on
# 127.0.0.1:AMQP_PORT, Erlang distribution on AMQP_PORT+20000, no plugins) and
# runs as the rabbitmq user, sharing that user's Erlang cookie, so nodes can
# later join one another with `rabbitmqctl join_cluster`.
set -euo pipefail

BASE="${HOOKWIRE_NODES_DIR:-/tmp/hookwire-rabbitmq}"
BIN=/usr/lib/rabbitmq/bin

usage() { sed -n '2,15p' "$0" >&2; exit 2; }

# Runs a RabbitMQ script as the rabbitmq user with the node's environment.
as_rabbitmq() {
  local name=$1 port=$2; shift 2
  local dir="$BASE/$name"
  local env="HOME=/var/lib/rabbitmq RABBITMQ_NODENAME=$name@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  env+=" RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$((port + 20000))"
  env+=" RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
  env+=" RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config"
  env+=" RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid"
  if [ "$(id -u)" -eq 0 ]; then
    su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && env $env $*"
  else
    sudo -u rabbitmq sh -c "cd /var/lib/rabbitmq && env $env $*"
  fi
}

port_of() { cat "$BASE/$1/port" 2>/dev/null || { echo "no node $1 under $BASE" >&2; exit 1; }; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local name=$1 port=$2 dir="$BASE/$1"
  if answers "$port" && [ "$(cat "$dir/port" 2>/dev/null)" = "$port" ]; then
    echo "rabbitmq node $name: already answering on 127.0.0.1:$port"
    return
  fi
  if answers "$port"; then
    echo "rabbitmq node $name: 127.0.0.1:$port is taken by something else" >&2
    exit 1
  fi
  mkdir -p "$dir/mnesia" "$dir/log"
  echo "$port" >"$dir/port"
  printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$port" >"$dir/rabbitmq.conf"
  echo '[].' >"$dir/enabled_plugins"
  # A quorum queue's at-least-once dead-lettering (hookwire's retry queues
  # moving an event back to its work queue when its delay is up) re-sends
  # what its target did not confirm after this long. RabbitMQ's default,
  # 180 s, held retried events that long after a cluster node was killed
  # (docs/RELIABILITY.md); 5 s costs at most a duplicate.
  echo '[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].' >"$dir/advanced.config"
  chown -R rabbitmq:rabbitmq "$dir"
  chmod 755 "$BASE"
  as_rabbitmq "$name" "$port" "$BIN/rabbitmq-server -detached"
  # The AMQP listener opens last, once the node has booted: a few seconds,
  # a first boot (fresh data) up to about 20.
  for _ in $(seq 1 90); do
    if answers "$port"; then
      echo "rabbitmq node $name: answering on 127.0.0.1:$port"
      return
    fi
    sleep 1
  done
  echo "rabbitmq node $name: did not answer on $port" >&2
  exit 1
}

stop() {
  local name=$1 dir="$BASE/$1"
  [ -d "$dir" ] || return 0
  local port; port=$(port_of "$name")
  as_rabbitmq "$name" "$port" "$BIN/rabbitmqctl -n $name@localhost stop" >/dev/null 2>&1 || true
  # A node that would not stop (or half-started) is killed by its pid file.
  if [ -f "$dir/pid" ]; then kill -9 "$(cat "$dir/pid")" 2>/dev/null || true; fi
  rm -rf "$dir"
  echo "rabbitmq node $name: stopped"
}

# A clean stop and start with the data kept: what a broker upgrade or a host
# reboot does to the queues, streams and messages on the node.
restart() {
  local name=$1 port; port=$(port_of "$1")
  as_rabbitmq "$name" "$port" "$BIN/rabbitmqctl -n $name@localhost stop" >/dev/null
  for _ in $(seq 1 30); do answers "$port" || break; sleep 1; done
  start "$name" "$port"
}

case "${1:-}" in
  start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || usage; stop "$2" ;;
  restart) [ $# -eq 2 ] || usage; restart "$2" ;;
  ctl)
    [ $# -ge 3 ] || usage
    name=$2; shift 2
    as_rabbitmq "$name" "$(port_of "$name")" "$BIN/rabbitmqctl -n $name@localhost $*"
    ;;
  *) usage ;;
esac
