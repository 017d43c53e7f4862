#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs Debian's
# rabbitmq-server if it is missing, starts it if it is not running, and waits
# until the AMQP port accepts connections. Safe to run any number of times.
#
# File descriptors: every quorum queue keeps files open, and a broker started
# by hand inherits the login's soft limit (often 1024). With that, about 30
# subscriptions (a work queue and 5 retry queues each, all quorum) exhaust
# the broker, and declares hang until hookwire's operation timeout
# (docs/BENCHMARKS.md, fan-out 100). So before starting the broker this
# raises the rabbitmq user's limit (pam_limits applies it when Debian's
# scripts `su` to that user; under systemd the unit's LimitNOFILE applies
# instead), and it warns about a running broker with fewer. The warning
# checks the first RabbitMQ node it finds: the machine's own, normally,
# though deploy/rabbitmq-node.sh's extra nodes run as the same user.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

# RabbitMQ's production checklist asks for 65536; a container's hard limit
# may be lower, and asking for more than it makes `su` fail.
WANTED_FDS=65536
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$WANTED_FDS" ]; then WANTED_FDS=$hard; fi
# The broker we need the warning for needs at least this many.
ENOUGH_FDS=16384

warn_if_few_fds() {
  local pid limit
  pid=$(pgrep -u rabbitmq -f 'beam.smp.*-s rabbit' 2>/dev/null | head -1 || true)
  [ -n "$pid" ] || pid=$(pgrep -f 'beam.smp.*rabbit' 2>/dev/null | head -1 || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/limits" ] || return 0
  limit=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || true)
  # Gone meanwhile, or "unlimited": nothing to warn about.
  case $limit in '' | *[!0-9]*) return 0 ;; esac
  if [ "$limit" -lt "$ENOUGH_FDS" ]; then
    echo "rabbitmq: WARNING: the broker may open only $limit files; about 30 subscriptions exhaust 1024." >&2
    echo "rabbitmq: restart it with a higher limit (this script sets one for brokers it starts; README, RabbitMQ topology)." >&2
  fi
}

if port_open; then
  echo "rabbitmq: already answering on 127.0.0.1:5672"
  warn_if_few_fds
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq: not installed; installing Debian's rabbitmq-server"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi

if [ -d /etc/security/limits.d ] && [ ! -e /etc/security/limits.d/rabbitmq.conf ]; then
  if ! echo "rabbitmq - nofile $WANTED_FDS" | $SUDO tee /etc/security/limits.d/rabbitmq.conf >/dev/null 2>&1; then
    echo "rabbitmq: could not write /etc/security/limits.d/rabbitmq.conf; the broker keeps the limit it inherits" >&2
  fi
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
    warn_if_few_fds
    exit 0
  fi
  sleep 1
done
echo "rabbitmq: did not come up within 120 s" >&2
exit 1
