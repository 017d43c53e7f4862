#!/usr/bin/env bash
# Deletes the queues and exchanges that killed test, chaos and benchmark runs
# left on the machine's RabbitMQ (127.0.0.1:5672). A run cleans up its own
# namespace when it ends, but a process that is killed (kill -9, a CI
# timeout, `timeout` around a benchmark) runs no cleanup, and what it made
# stays: each stream holds file descriptors for good, and a broker with
# Debian's default limit of 1024 runs out after a few dozen such namespaces.
# It then accepts TCP connections but never answers the AMQP handshake, and
# everything that connects waits.
#
#   deploy/sweep-test-namespaces.sh [MINUTES]
#
# Only namespaces the test code names (hwtest-, hwbench-, bench-, chaos-, it-acks-,
# each followed by a UUIDv7) and older than MINUTES (default 120) are
# deleted: the age is read from the UUIDv7 in the name, so a run in progress
# is never touched. Needs rabbitmqctl (root or the rabbitmq user); without it
# this says so and does nothing.
set -euo pipefail

MINUTES="${1:-120}"
case $MINUTES in '' | *[!0-9]*) echo "usage: $0 [MINUTES]" >&2; exit 2 ;; esac

# Every call is bounded: a broker in trouble must not hang the test run
# here. (`rabbitmqctl status` hangs on a broker out of file handles: it asks
# the file handle cache, which is what is stuck; `eval` does not.)
ctl() { timeout 120 rabbitmqctl "$@"; }

if ! command -v rabbitmqctl >/dev/null 2>&1 || ! ctl -q eval 'ok.' >/dev/null 2>&1; then
  echo "sweep: rabbitmqctl cannot reach the broker here; nothing swept" >&2
  exit 0
fi

# Names of the form PREFIX-<32 hex>[.anything], older than the cutoff, as an
# Erlang list of binaries (empty: []).
stale() {
  python3 -c '
import re, sys, time
cutoff_ms = (time.time() - int(sys.argv[1]) * 60) * 1000
pattern = re.compile(r"^(?:hwtest|hwbench|bench|bench-raw|bench-fan|chaos|it-acks)-([0-9a-f]{32})(?:[.-]|$)")
names = []
for line in sys.stdin:
    name = line.strip()
    m = pattern.match(name)
    # A UUIDv7 starts with its creation time: 48 bits of Unix milliseconds.
    if m and int(m.group(1)[:12], 16) < cutoff_ms:
        names.append(name)
print(len(names))
print("[" + ",".join("<<\"%s\">>" % n for n in names) + "]")
' "$MINUTES"
}

{ read -r queue_count; read -r queues; } < <(ctl -q list_queues name --no-table-headers | stale)
{ read -r exchange_count; read -r exchanges; } < <(ctl -q list_exchanges name --no-table-headers | stale)

if [ "$queue_count" -eq 0 ] && [ "$exchange_count" -eq 0 ]; then
  echo "sweep: no test namespaces older than $MINUTES minutes"
  exit 0
fi
# One call for all of them: rabbitmqctl starts an Erlang VM each time, about
# a second, and there may be hundreds.
ctl -q eval "
  Queues = $queues,
  [catch rabbit_amqqueue:delete(Q, false, false, <<\"sweep\">>)
   || Q <- rabbit_amqqueue:list(<<\"/\">>), lists:member(element(4, amqqueue:get_name(Q)), Queues)],
  [catch rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, X), false, <<\"sweep\">>) || X <- $exchanges],
  ok." >/dev/null
echo "sweep: deleted $queue_count queues and $exchange_count exchanges of test namespaces older than $MINUTES minutes"
