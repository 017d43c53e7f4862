#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 and lets the `postgres`
# user in from loopback without a password (what the tests and the event
# log bench use): installs Debian's postgresql if it is missing, starts its
# cluster if it is not running, and adds a loopback trust line for the
# `postgres` user if a password is asked for. Safe to run any number of times.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

can_connect() { psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if command -v psql >/dev/null 2>&1 && can_connect; then
  echo "postgres: already answering on 127.0.0.1:5432"
  exit 0
fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "postgres: not installed; installing Debian's postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

if ! port_open; then
  echo "postgres: starting"
  # The first cluster Debian created (e.g. "15 main").
  read -r version cluster _ < <(pg_lsclusters --no-header | head -1)
  if ! { command -v systemctl >/dev/null 2>&1 && $SUDO systemctl start postgresql 2>/dev/null && port_open; }; then
    $SUDO pg_ctlcluster "$version" "$cluster" start
  fi
fi

for _ in $(seq 1 60); do
  port_open && break
  sleep 1
done
port_open || { echo "postgres: did not come up within 60 s" >&2; exit 1; }

if ! can_connect; then
  # Debian's default asks loopback clients for a password: trust the
  # postgres user from 127.0.0.1 (a test machine's database, nothing else).
  read -r version cluster _ < <(pg_lsclusters --no-header | head -1)
  hba="/etc/postgresql/$version/$cluster/pg_hba.conf"
  echo "postgres: trusting the postgres user on 127.0.0.1 ($hba)"
  $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  $SUDO pg_ctlcluster "$version" "$cluster" reload
  sleep 1
fi
can_connect || { echo "postgres: cannot connect as postgres on 127.0.0.1" >&2; exit 1; }
echo "postgres: answering on 127.0.0.1:5432"
