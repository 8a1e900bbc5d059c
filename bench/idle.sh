#!/bin/bash
# bench/idle.sh - postern's RSS per idle connection: N sessions that said EHLO and wait, in
# plaintext, then N that also did STARTTLS and a second EHLO. Then the RSS SETTLE seconds after
# the TLS ones all closed (memory given back after a burst).
#
# Usage (from the repository root): [N=500] [PORT=2725] [SETTLE=60] bash bench/idle.sh
# Runs the release binary (BIN=...) on 127.0.0.1:PORT with a fresh directory from
# postern-dir.sh, a fresh server per mode. Loopback only; needs /usr/bin/python3 and openssl.
# Prints kB per connection.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/postern}
N=${N:-500}
PORT=${PORT:-2725}
DIR=$(mktemp -d /tmp/postern-idle.XXXXXX)
. "$ROOT/bench/postern-dir.sh"
postern_dir "$DIR"
sed -i "s/127.0.0.1:2525/127.0.0.1:$PORT/" "$DIR/postern.toml"
start() {
  env ${ENVX:-} POSTERN_DELIVERY_PAUSED=1 "$BIN" -C "$DIR" serve </dev/null >"$DIR/log" 2>&1 &
  PID=$!
  for i in $(seq 1 50); do ss -Hltn "sport = :$PORT" | grep -q LISTEN && break; sleep 0.1; done
  sleep 1
}
PID=
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
# Each mode on a fresh server: sessions of an earlier mode would leave freed memory for the
# next to reuse.
for mode in plain tls; do
  [ -n "$PID" ] && { kill $PID; wait $PID 2>/dev/null || true; }
  start
  /usr/bin/python3 - "$PID" "$PORT" "$N" "$mode" <<'PY'
import socket, ssl, sys, time
pid, port, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def reply(f):
    while True:
        line = f.readline()
        if not line or line[3:4] != b"-":
            return line
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
before = rss()
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO idle.test\r\n"); reply(f)
    if mode == "tls":
        s.sendall(b"STARTTLS\r\n"); reply(f)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        g = t.makefile("rb")
        t.sendall(b"EHLO idle.test\r\n"); reply(g)
        held.append((t, g))
    else:
        held.append((s, f))
time.sleep(1)
after = rss()
print(f"{mode}: {n} idle sessions: VmRSS {before} -> {after} kB, {(after - before) / n:.1f} kB per session")
for s, f in held:
    s.close()
PY
  sleep 1
done
sleep "${SETTLE:-60}"
echo "${SETTLE:-60} s after the last close: $(awk '/VmRSS|VmHWM/{printf "%s%s kB ",$1,$2}' /proc/$PID/status)"
