#!/bin/bash
# bench/load.sh - postern alone under smtp-source load, for profiling (as root, from the repo root).
# Usage: [DELIVERY=maildir|paused] [CONC=20] [COUNT=2000] [WRAP="perf record -g -o /tmp/perf.data"] bash bench/load.sh
# ENVX: extra environment for postern (e.g. MALLOC_ARENA_MAX=2).
# WRAP, if set, is a command prefix given `-p PID` (perf record, strace -c -f) for the load.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/postern}
SHARED=${SHARED:-$ROOT/../shared/bench}
[ -f "$SHARED/bench-smtp.sh" ] || { echo "bench/load.sh needs the benchmark harness's bench-smtp.sh: set SHARED=/path/to/harness (now $SHARED)" >&2; exit 1; }
NETNS=smtplab
DIR=$(mktemp -d /tmp/postern-load.XXXXXX)
. "$ROOT/bench/postern-dir.sh"
postern_dir "$DIR"
PAUSE=; [ "${DELIVERY:-maildir}" = paused ] && PAUSE=1
ip netns exec $NETNS env ${PAUSE:+POSTERN_DELIVERY_PAUSED=1} ${ENVX:-} "$BIN" -C "$DIR" serve </dev/null >"$DIR/log" 2>&1 &
PID=$!
# The directory is kept: deleting thousands of files just before the next run slows inode
# allocation on a journal-less ext4 (recently_deleted) and would skew that run. Remove later.
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; echo "kept $DIR"' EXIT
for i in $(seq 1 50); do ip netns exec $NETNS ss -Hltn 'sport = :2525' | grep -q LISTEN && break; sleep 0.1; done
W=
if [ -n "${WRAP:-}" ]; then $WRAP -p $PID & W=$!; sleep 0.5; fi
NETNS=$NETNS PID=$PID EXTRA=-A bash "$SHARED/bench-smtp.sh" 127.0.0.1:2525 "${CONC:-20}" "${COUNT:-2000}" 5120
if [ -n "$W" ]; then kill -INT $W; wait $W || true; fi
grep -c ' delivered ' "$DIR/log" || true
