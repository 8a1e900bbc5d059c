#!/bin/bash
# bench/auth-burst.sh - postern's memory around a burst of AUTH attempts (issue 13, item 4).
#
# Each password check is an Argon2 hash of about 19 MiB; the hashes run on a few threads of
# their own that reuse their working memory, so memory should rise by a bounded amount
# during a burst (threads x 19 MiB) and not grow with the number of logins or clients.
# This starts the release binary on loopback (submission on 127.0.0.1:$PORT, STARTTLS with a
# throw-away certificate), makes user u@example.test, then CLIENTS threads, each from its own
# loopback address (127.0.0.2...: the lockout is per client network), try ROUNDS logins each,
# a wrong password every other time. It prints VmRSS and VmHWM: idle, after the burst, 5 s and 35 s later.
#
# Usage (from the repository root): bash bench/auth-burst.sh
# Environment: CLIENTS [60]  ROUNDS [8]  PORT [2587]  BIN [target/release/postern, built if
#   missing]. Needs python3 and openssl. Loopback only; nothing asks a resolver.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${CLIENTS:-60}
ROUNDS=${ROUNDS:-8}
PORT=${PORT:-2587}
BIN=${BIN:-$ROOT/target/release/postern}
[ -x "$BIN" ] || cargo build --release -p postern --manifest-path "$ROOT/Cargo.toml"
DIR=$(mktemp -d /tmp/postern-auth.XXXXXX)
. "$ROOT/bench/postern-dir.sh"
postern_dir "$DIR"
# Loopback clients are exempt from the per-address limits; the lockout still counts them.
sed -i "s/^smtp = .*/smtp = [\"127.0.0.1:$((PORT + 1))\"]\nsubmission = [\"127.0.0.1:$PORT\"]/" "$DIR/postern.toml"
printf 'right-password\n' | "$BIN" -C "$DIR" user add u@example.test --password-stdin >/dev/null
"$BIN" -C "$DIR" serve </dev/null >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do ss -Hltn "sport = :$PORT" | grep -q LISTEN && break; sleep 0.1; done
mem() { awk '/VmRSS|VmHWM/{printf "%s %s kB  ",$1,$2}' "/proc/$PID/status"; echo; }
echo "idle:         $(mem)"
python3 - "$PORT" "$CLIENTS" "$ROUNDS" <<'PY'
import smtplib, ssl, sys, threading, time
port, clients, rounds = map(int, sys.argv[1:])
ctx = ssl._create_unverified_context()
results = {"ok": 0, "refused": 0, "error": 0}
lock = threading.Lock()
def client(n):
    src = f"127.0.{1 + (n + 1) // 250}.{2 + (n + 1) % 250}"
    for r in range(rounds):
        password = "right-password" if r % 2 else "wrong-password"
        try:
            with smtplib.SMTP("127.0.0.1", port, source_address=(src, 0), timeout=60) as s:
                s.starttls(context=ctx)
                s.login("u@example.test", password)
                key = "ok"
        except smtplib.SMTPAuthenticationError:
            key = "refused"
        except Exception:
            key = "error"
        with lock:
            results[key] += 1
start = time.time()
threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for t in threads: t.start()
for t in threads: t.join(timeout=600)
print(f"logins:       {clients * rounds} in {time.time() - start:.1f} s: "
      f"{results['ok']} ok, {results['refused']} refused, {results['error']} errors")
PY
echo "after burst:  $(mem)"
sleep 5
echo "5 s later:    $(mem)"
sleep 30
echo "35 s later:   $(mem)   (the hashing threads give their memory back after 30 s idle)"
echo "hashing threads: $(ls /proc/$PID/task | while read t; do cat /proc/$PID/task/$t/comm; done | grep -c postern-hash)"
