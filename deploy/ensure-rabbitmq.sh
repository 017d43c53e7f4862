#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs Debian's
# rabbitmq-server if it is missing, starts it if it is not running, and waits
# until the AMQP port accepts connections. Safe to run any number of times.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
  echo "rabbitmq: already answering on 127.0.0.1:5672"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq: not installed; installing Debian's rabbitmq-server"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! port_open; then
  echo "rabbitmq: starting"
  # The Debian package may start it through systemd; where there is none
  # (containers, CI) start it detached ourselves.
  if ! { command -v systemctl >/dev/null 2>&1 && $SUDO systemctl start rabbitmq-server 2>/dev/null; }; then
    $SUDO rabbitmq-server -detached
  fi
fi

for _ in $(seq 1 120); do
  if port_open; then
    echo "rabbitmq: answering on 127.0.0.1:5672"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq: did not come up within 120 s" >&2
exit 1
