#!/bin/bash
# bench/run.sh - postern beside chasquid and a whole Postfix (and Postfix's smtp-sink as the
# ceiling), in one run.
#
# Uses the shared harness (../shared/bench): smtp-source sends 5 KiB messages, one connection
# per message, at 1, 20 and 100 concurrent sessions, inside the private network namespace
# `smtplab` (loopback only). Every server makes each message durable before its 250.
# Then: idle RSS, and peak RSS while postern receives one 100 MB message.
#
# Usage (as root, from the repository root):  bash bench/run.sh
# Environment: REPS [3]  COUNT [2000]  CONCS ["1 20 100"]  LAB [/tmp/postern-lab]
#   DELIVERY [maildir]: `maildir` delivers every message to a Maildir (tmp/, fsync, new/) while
#   the load runs; `paused` keeps delivery stopped (POSTERN_DELIVERY_PAUSED=1), measuring only
#   the durable acceptance, like chasquid here, whose delivery agent is /bin/true.
# Writes the harness's raw.txt and summary.md under $LAB/results/<timestamp>/ and prints them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
export LAB=${LAB:-/tmp/postern-lab}
NETNS=smtplab
[ -d "$SHARED" ] || {
  echo "bench/run.sh: the benchmark harness (bench-smtp.sh, peers.sh, setup-chasquid.sh, install-peers.sh)" >&2
  echo "  is not at $SHARED; point SHARED=/path/to/harness at a copy of it. The tests do not need it;" >&2
  echo "  without it, bench/mem.sh (no LOAD) and bench/load.sh with your own smtp-source still run." >&2
  exit 1; }

command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || "$SHARED/install-peers.sh"
cargo build --release -p postern --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/postern

"$SHARED/setup-chasquid.sh" setup >/dev/null
"$SHARED/setup-chasquid.sh" start
"$SHARED/peers.sh" start
# A complete Postfix (smtpd, cleanup, qmgr, its durable queue) on 3528. With DELIVERY=maildir
# its virtual(8) writes every message to a Maildir as postern does; with paused it discards
# after queueing, like postern's paused mode. Its CPU column is not comparable (master counts
# its children only when they exit): compare throughput.
PF_DELIVERY=maildir; [ "${DELIVERY:-maildir}" = paused ] && PF_DELIVERY=discard
rm -rf "$LAB/postfix"
PF_DELIVERY=$PF_DELIVERY "$SHARED/setup-postfix.sh" setup >/dev/null
"$SHARED/setup-postfix.sh" start

# postern: domain example.test with user u (the harness sends to u@example.test).
PDIR=$LAB/postern
# An old data directory is moved aside, not deleted: on a journal-less ext4, inodes deleted in
# the last minutes are skipped one by one at every file creation (recently_deleted), which
# would slow the Maildir deliveries of this run. Remove $LAB/old.* later, when idle.
[ -d "$PDIR" ] && mv "$PDIR" "$LAB/old.postern.$(date +%s)"
. "$ROOT/bench/postern-dir.sh"
postern_dir "$PDIR" "max_message_size = 209715200"
stop_postern() { [ -s "$LAB/run/postern.pid" ] && kill "$(cat "$LAB/run/postern.pid")" 2>/dev/null || true; }
trap 'stop_postern; "$SHARED/peers.sh" stop >/dev/null; "$SHARED/setup-chasquid.sh" stop >/dev/null; "$SHARED/setup-postfix.sh" stop >/dev/null' EXIT
PAUSE=; [ "${DELIVERY:-maildir}" = paused ] && PAUSE=1
setsid ip netns exec $NETNS env ${PAUSE:+POSTERN_DELIVERY_PAUSED=1} "$BIN" -C "$PDIR" serve </dev/null >"$LAB/logs/postern.log" 2>&1 &
echo $! > "$LAB/run/postern.pid"
for i in $(seq 1 50); do ip netns exec $NETNS ss -Hltn 'sport = :2525' | grep -q LISTEN && break; sleep 0.1; done
sleep 1
PID=$(cat "$LAB/run/postern.pid")
echo "postern idle: $(awk '/VmRSS|VmHWM/{printf "%s%s kB ",$1,$2}' /proc/$PID/status)"

TARGETS="smtp-sink,127.0.0.1:3527,$LAB/run/smtp-sink.pid chasquid,127.0.0.1:3525,$LAB/run/chasquid.pid,$LAB/chasquid-data/queue postfix,127.0.0.1:3528,$LAB/run/postfix.pid,$LAB/postfix/queue/active postern,127.0.0.1:2525,$LAB/run/postern.pid" \
  EXTRA=-A REPS=${REPS:-3} COUNT=${COUNT:-2000} CONCS=${CONCS:-"1 20 100"} WAIT_QUIET=1 \
  "$SHARED/bench-all.sh"

# Peak RSS for one 5 KB message, then for one 100 MB message (memory must stay flat). With
# delivery on, the peak includes delivering it (the wait ends when the log says it left the queue).
send_one() {
  ip netns exec $NETNS /usr/bin/python3 - "$1" <<'PY'
import smtplib, sys
size = int(sys.argv[1])
line = b"x" * 998 + b"\r\n"
body = b"Subject: big\r\n\r\n" + line * max(1, size // len(line))
with smtplib.SMTP("127.0.0.1", 2525, local_hostname="bench.test", timeout=300) as s:
    s.sendmail("bench@sender.test", ["u@example.test"], body)
PY
}
wait_delivered() {
  [ -n "$PAUSE" ] && return 0
  for i in $(seq 1 600); do
    [ "$(grep -c ' removed ' "$LAB/logs/postern.log")" -ge "$1" ] && return 0; sleep 0.1
  done
}
# Let delivery catch up with the matrix first: wait until nothing leaves the queue for 2 s.
last=-1
for i in $(seq 1 60); do
  now=$(grep -c ' removed ' "$LAB/logs/postern.log" || true)
  [ "$now" = "$last" ] && break; last=$now; sleep 2
done
for size in 5120 100000000; do
  before=$(grep -c ' removed ' "$LAB/logs/postern.log" || true)
  echo 5 > /proc/$PID/clear_refs
  send_one $size
  wait_delivered $((before + 1))
  echo "postern peak for one message of $size bytes: $(awk '/VmRSS|VmHWM/{printf "%s%s kB ",$1,$2}' /proc/$PID/status)"
done
