#!/bin/bash
# bench/outbound.sh - outbound delivery speed: COUNT messages queued for DOMAINS remote domains
# (each an smtp-sink on loopback, reached through [routes]), then delivered: messages/s and
# server CPU per message from the moment delivery starts until the queue is empty.
#
# Usage (as root, from the repository root): [COUNT=2000] [DOMAINS=10] [CONC=20] bash bench/outbound.sh
# Needs Postfix's smtp-source and smtp-sink (install-peers.sh of the harness, or the postfix
# package) and openssl. Loopback only: the sinks listen on 127.0.0.1:3601..; postern on 2825.
# The messages are accepted with delivery paused (POSTERN_DELIVERY_PAUSED=1) from a trusted
# network ([relay] trusted_networks = 127.0.0.0/8), then the server is restarted on the same
# data directory with delivery on. bench/outbound-postfix.sh runs Postfix on the same load.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/postern}
COUNT=${COUNT:-2000}
DOMAINS=${DOMAINS:-10}
CONC=${CONC:-20}
PORT=2825
SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
DIR=$(mktemp -d /tmp/postern-outbound.XXXXXX)
. "$ROOT/bench/postern-dir.sh"
routes=""
for i in $(seq 1 "$DOMAINS"); do routes="$routes\"d$i.test\" = \"[127.0.0.1]:$((3600 + i))\"\n"; done
postern_dir "$DIR"
sed -i "s/127.0.0.1:2525/127.0.0.1:$PORT/" "$DIR/postern.toml"
printf '[relay]\ntrusted_networks = ["127.0.0.0/8"]\n[delivery]\nmax_connections = 40\nmta_sts = false\n[routes]\n%b' "$routes" >> "$DIR/postern.toml"
SINKS=()
for i in $(seq 1 "$DOMAINS"); do
  "$SINK" -u nobody -c "127.0.0.1:$((3600 + i))" 256 >/dev/null 2>&1 & SINKS+=($!)
done
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; for s in "${SINKS[@]}"; do kill "$s" 2>/dev/null; done; wait 2>/dev/null; echo "kept $DIR" >&2; }
trap cleanup EXIT
start() {
  env "$@" "$BIN" -C "$DIR" serve </dev/null >>"$DIR/log" 2>&1 &
  PID=$!
  for i in $(seq 1 50); do ss -Hltn "sport = :$PORT" | grep -q LISTEN && break; sleep 0.1; done
}
start POSTERN_DELIVERY_PAUSED=1
per=$((COUNT / DOMAINS))
for i in $(seq 1 "$DOMAINS"); do
  "$SOURCE" -c -l 5120 -m "$per" -s "$((CONC / DOMAINS + 1))" -f sender@example.test -t "rcpt@d$i.test" "127.0.0.1:$PORT" >/dev/null
done
queued=$(grep -c ' queued id=' "$DIR/log" || true)
kill "$PID"; wait "$PID" 2>/dev/null || true
start
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
busy() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8}' /proc/stat; }
t0=$(date +%s.%N); c0=$(ticks); m0=$(busy)
for i in $(seq 1 1200); do
  [ "$(grep -c ' removed id=' "$DIR/log" || true)" -ge "$queued" ] && break
  sleep 0.1
done
t1=$(date +%s.%N); c1=$(ticks); m1=$(busy)
delivered=$(grep -c ' delivered id=' "$DIR/log" || true)
hz=$(getconf CLK_TCK)
awk -v q="$queued" -v d="$delivered" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v m0="$m0" -v m1="$m1" -v hz="$hz" -v n="$DOMAINS" 'BEGIN {
  s = t1 - t0; cpu = (c1 - c0) / hz; all = (m1 - m0) / hz; d1 = (d > 0 ? d : 1)
  printf "outbound: %d queued, %d delivered to %d domains in %.2f s: %.0f msg/s, server CPU %.0f us/msg, machine CPU %.0f us/msg\n", q, d, n, s, d / s, cpu * 1e6 / d1, all * 1e6 / d1
}'
