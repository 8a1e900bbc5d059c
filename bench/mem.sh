#!/bin/bash
# bench/mem.sh - postern's peak RSS for one message of SIZE_MB (default 100) against a 5 KB one.
# Usage (as root, from the repository root): [DELIVERY=maildir|paused] [LOAD=4000] bash bench/mem.sh
# LOAD=N first sends N 5 KiB messages over 100 concurrent sessions (smtp-source), so the big
# message arrives while the store still compacts what the load left.
# Runs a release build in the `smtplab` netns (loopback only) on port 2525, with a fresh data dir.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/postern}
SHARED=${SHARED:-$ROOT/../shared/bench}  # only for LOAD=N (its bench-smtp.sh sends the load)
NETNS=smtplab
DIR=$(mktemp -d /tmp/postern-mem.XXXXXX)
. "$ROOT/bench/postern-dir.sh"
postern_dir "$DIR" "max_message_size = 209715200"
PAUSE=; [ "${DELIVERY:-maildir}" = paused ] && PAUSE=1
ip netns exec $NETNS env ${PAUSE:+POSTERN_DELIVERY_PAUSED=1} ${ENVX:-} "$BIN" -C "$DIR" serve </dev/null >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for i in $(seq 1 50); do ip netns exec $NETNS ss -Hltn 'sport = :2525' | grep -q LISTEN && break; sleep 0.1; done
hwm() { awk '/VmRSS|VmHWM/{printf "%s%s kB ",$1,$2}' /proc/$PID/status; }
echo "idle:            $(hwm)"
send() {
  ip netns exec $NETNS /usr/bin/python3 - "$1" <<'PY'
import smtplib, sys
size = int(sys.argv[1])
line = b"x" * 998 + b"\r\n"
body = b"Subject: big\r\n\r\n" + line * max(1, size // len(line))
with smtplib.SMTP("127.0.0.1", 2525, local_hostname="bench.test", timeout=300) as s:
    s.sendmail("bench@sender.test", ["u@example.test"], body)
PY
}
settle() { # wait until delivery has emptied the queue (maildir mode)
  [ -n "$PAUSE" ] && return 0
  for i in $(seq 1 600); do grep -q ' removed ' "$DIR/log" && [ "$(grep -c ' removed ' "$DIR/log")" -ge "$1" ] && return 0; sleep 0.1; done
}
N=0
if [ -n "${LOAD:-}" ]; then
  [ -f "$SHARED/bench-smtp.sh" ] || { echo "LOAD needs the harness's bench-smtp.sh: set SHARED=/path/to/harness" >&2; exit 1; }
  NETNS=$NETNS EXTRA=-A bash "$SHARED/bench-smtp.sh" 127.0.0.1:2525 100 "$LOAD" 5120 >/dev/null
  N=$LOAD; settle $N
  echo "after the load:  $(hwm)"
fi
echo 5 > /proc/$PID/clear_refs; send 5120; N=$((N + 1)); settle $N
echo "after 5 KB:      $(hwm)"
for k in 1 2 3; do
  echo 5 > /proc/$PID/clear_refs; send $(( ${SIZE_MB:-100} * 1000 * 1000 )); N=$((N + 1)); settle $N
  echo "after ${SIZE_MB:-100} MB (#$k): $(hwm)"
done
