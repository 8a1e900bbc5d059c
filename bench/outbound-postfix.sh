#!/bin/bash
# bench/outbound-postfix.sh - the reference for bench/outbound.sh: a whole Postfix delivering
# the same load (COUNT messages of 5 KiB for DOMAINS domains, each an smtp-sink on loopback,
# reached through transport_maps), timed from the release of its queue until it is empty.
#
# Usage (as root, from the repository root): [COUNT=2000] [DOMAINS=10] bash bench/outbound-postfix.sh
# Needs the postfix package (smtp-source, smtp-sink, postfix; nothing is started at boot).
# Postfix listens on 127.0.0.1:3529 and runs from its own directory under $LAB; its queue is
# held (defer_transports = smtp) while the load is accepted, then released with a flush.
# Postfix's work is spread over many processes, so this prints the whole machine's busy CPU
# per message over the delivery (bench/outbound.sh prints the same column for postern).
set -euo pipefail
COUNT=${COUNT:-2000}
DOMAINS=${DOMAINS:-10}
LAB=${LAB:-/tmp/postern-outbound-postfix}
ADDR=127.0.0.1:3529
SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
B=$LAB/postfix.$$; E=$B/etc
mkdir -p "$E" "$B/queue" "$B/data"
chown postfix:postfix "$B/data"
transports=""
for i in $(seq 1 "$DOMAINS"); do transports="$transports d$i.test=smtp:[127.0.0.1]:$((3600 + i))"; done
cat > "$E/main.cf" <<M
compatibility_level = 3.6
queue_directory = $B/queue
data_directory = $B/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $B/maillog
maillog_file_prefixes = $B
myhostname = mx.example.test
mydomain = example.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
transport_maps = inline:{$(echo $transports | tr ' ' ',')}
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtp_tls_security_level = none
smtp_dns_support_level = disabled
default_destination_concurrency_limit = 4
default_process_limit = 200
defer_transports = smtp
biff = no
notify_classes =
delay_warning_time = 0
M
cat > "$E/master.cf" <<C
$ADDR inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
C
SINKS=()
for i in $(seq 1 "$DOMAINS"); do
  "$SINK" -u nobody -c "127.0.0.1:$((3600 + i))" 256 >/dev/null 2>&1 & SINKS+=($!)
done
cleanup() { postfix -c "$E" stop >/dev/null 2>&1 || true; for s in "${SINKS[@]}"; do kill "$s" 2>/dev/null; done; wait 2>/dev/null; echo "kept $B" >&2; }
trap cleanup EXIT
postfix -c "$E" start >/dev/null 2>&1
for i in $(seq 1 50); do ss -Hltn "sport = :${ADDR##*:}" | grep -q LISTEN && break; sleep 0.1; done
per=$((COUNT / DOMAINS))
for i in $(seq 1 "$DOMAINS"); do
  "$SOURCE" -c -l 5120 -m "$per" -s 3 -f sender@example.test -t "rcpt@d$i.test" "$ADDR" >/dev/null
done
queued() { find "$B/queue/incoming" "$B/queue/active" "$B/queue/deferred" "$B/queue/maildrop" -type f 2>/dev/null | wc -l; }
# Wait until every message is in the queue (cleanup done), then release it.
for i in $(seq 1 300); do [ "$(queued)" -ge "$((per * DOMAINS))" ] && break; sleep 0.1; done
busy() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8}' /proc/stat; }
postconf -c "$E" -e "defer_transports =" >/dev/null
t0=$(date +%s.%N); c0=$(busy)
postfix -c "$E" reload >/dev/null 2>&1
postqueue -c "$E" -f >/dev/null 2>&1 || true
for i in $(seq 1 1200); do [ "$(queued)" -eq 0 ] && break; sleep 0.1; done
t1=$(date +%s.%N); c1=$(busy)
delivered=$(grep -c 'status=sent' "$B/maillog" || true)
hz=$(getconf CLK_TCK)
awk -v d="$delivered" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v hz="$hz" -v n="$DOMAINS" 'BEGIN {
  s = t1 - t0; cpu = (c1 - c0) / hz
  printf "postfix outbound: %d delivered to %d domains in %.2f s: %.0f msg/s, machine CPU %.0f us/msg\n", d, n, s, d / s, cpu * 1e6 / (d > 0 ? d : 1)
}'
