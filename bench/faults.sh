#!/bin/bash
# bench/faults.sh - crash and fault counts (issue 13): acked vs delivered vs duplicates.
#
# Three scenarios, each against the release binary on loopback with its own configuration
# and data directory (bench/postern-dir.sh: domain example.test, user u with a Maildir,
# [checks] off, [dns] at 127.0.0.1:9 so nothing asks a real resolver):
#   kill9       20 client threads send MESSAGES messages; after a third is acked the server
#               gets SIGKILL and is started again on the same data_dir; the clients retry
#               (connection refused, lost connections) until their share is acked.
#               Expect lost=0, few duplicates.
#   diskfull    data_dir and the Maildir on a tmpfs of FULL_SIZE; once a third is acked, a
#               filler file takes all its room (clients get 452 4.3.1: refused, not acked,
#               sent again later) for FULL_SECS, then is deleted; the server must take mail
#               again without a restart. Expect lost=0, duplicates=0.
#   journalcut  CUT_MESSAGES messages queued with delivery paused (POSTERN_DELIVERY_PAUSED=1),
#               SIGKILL, the newest <data_dir>/queue/<n>.jnl loses its last 1/CUT_FRACTION
#               (or CUT_BYTES), restart with delivery on. Expect lost <= reported_lost, every
#               lost message named (`recovery`/`damaged` log lines, `postern queue recovery`).
# One line per scenario on standard output:
#   scenario=S sent=N acked=A delivered_unique=D duplicates=X lost=L reported_lost=R ...
# (the fields are explained in bench/faults.py); details and the logs' paths on stderr.
# Every attempt carries its own token (Subject, Message-ID), so Maildir files match acks.
# Delivery is awaited until every id the log shows queued is removed or in the Maildir,
# or no new Maildir file came for 10 s, at most 120 s. Logs and data stay in $LAB/<time>/
# (the diskfull tmpfs is unmounted at the end, its data gone; its log is beside it).
#
# Usage (as root, from the repository root):  bash bench/faults.sh [SCENARIO...]
# Needs: root (mount -t tmpfs for diskfull), python3 (standard library only), openssl,
# cargo (builds the release binary once: cargo build --release -p postern).
# Environment: LAB [/tmp/postern-faults]  PORT [2625]  THREADS [20]  MESSAGES [3000]
#   SIZE [2000 body bytes]  DEADLINE [180 s for the clients' share]
#   FULL_MESSAGES [1500]  FULL_SIZE [16m]  FULL_SECS [5]  MIN_FREE [1048576, min_free_space]
#   CUT_MESSAGES [200]  CUT_THREADS [4]  CUT_FRACTION [4]  CUT_BYTES [unset]
#   BIN [unset: cargo build --release -p postern, then $CARGO_TARGET_DIR or target/
#   release/postern; set: that binary, nothing is built]
# Exit status: 0 if every scenario met its expectation.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LAB=${LAB:-/tmp/postern-faults}
PORT=${PORT:-2625}
THREADS=${THREADS:-20}
SCENARIOS=${*:-kill9 diskfull journalcut}
[ "$(id -u)" = 0 ] || { echo "bench/faults.sh: run as root (the diskfull scenario mounts a tmpfs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/faults.sh: needs python3" >&2; exit 1; }

if [ -z "${BIN:-}" ]; then
  cargo build --release -p postern --manifest-path "$ROOT/Cargo.toml"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/postern
fi
. "$ROOT/bench/postern-dir.sh"

MOUNTED=
cleanup() { [ -n "$MOUNTED" ] && umount "$MOUNTED" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

RUN=$LAB/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
echo "bench/faults.sh: $BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), work in $RUN" >&2

# A configuration directory for one scenario, listening on $PORT; EXTRA top-level keys.
make_dir() {
  postern_dir "$1" "${2:-}"
  sed -i "s/127.0.0.1:2525/127.0.0.1:$PORT/" "$1/postern.toml"
}
faults() { python3 "$ROOT/bench/faults.py" "$@" --bin "$BIN" --port "$PORT"; }

status=0
n=0
for s in $SCENARIOS; do
  # Each run its own directory, so a scenario named twice starts afresh.
  n=$((n + 1)); W=$RUN/$n-$s
  echo "== $s ($W)" >&2
  case $s in
    kill9)
      make_dir "$W/conf"
      faults kill9 --dir "$W/conf" --threads "$THREADS" --messages "${MESSAGES:-3000}" \
        --size "${SIZE:-2000}" --deadline "${DEADLINE:-180}" || status=1 ;;
    diskfull)
      mkdir -p "$W/conf"
      mount -t tmpfs -o "size=${FULL_SIZE:-16m}" tmpfs "$W/conf"
      MOUNTED=$W/conf
      make_dir "$W/conf" "min_free_space = ${MIN_FREE:-1048576}
max_message_size = 1048576"
      faults diskfull --dir "$W/conf" --threads "$THREADS" \
        --messages "${FULL_MESSAGES:-1500}" --size "${SIZE:-2000}" --deadline "${DEADLINE:-180}" \
        --full-secs "${FULL_SECS:-5}" || status=1
      umount "$MOUNTED"; MOUNTED= ;;
    journalcut)
      make_dir "$W/conf"
      faults journalcut --dir "$W/conf" --threads "${CUT_THREADS:-4}" \
        --messages "${CUT_MESSAGES:-200}" --size "${SIZE:-2000}" --deadline "${DEADLINE:-180}" \
        --cut-fraction "${CUT_FRACTION:-4}" ${CUT_BYTES:+--cut-bytes "$CUT_BYTES"} || status=1 ;;
    *) echo "bench/faults.sh: unknown scenario $s (kill9, diskfull, journalcut)" >&2; status=1 ;;
  esac
done
exit $status
