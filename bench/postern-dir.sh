# bench/postern-dir.sh - sourced by run.sh, mem.sh and load.sh: `postern_dir DIR [EXTRA]`
# makes a configuration and data directory for the benchmarks in DIR: domain example.test
# with the Maildir of user u (the harness sends to u@example.test), a throw-away certificate,
# and a postern.toml listening on 127.0.0.1:2525, with EXTRA (top-level keys) added.
postern_dir() {
  local dir=$1 extra=${2:-}
  mkdir -p "$dir/domains/example.test" "$dir/mail/example.test/u" "$dir/certs/localhost"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$dir/certs/localhost/privkey.pem" \
    -out "$dir/certs/localhost/fullchain.pem" 2>/dev/null
  cat > "$dir/postern.toml" <<TOML
hostname = "localhost"
data_dir = "."
$extra
# Every client is 127.0.0.1 here; a real MX sees many addresses.
max_connections = 2000
max_connections_per_ip = 2000
# The namespace has no DNS: the SPF/DKIM/DMARC checks of port 25 would only measure DNS
# time-outs. They are off here; the loopback answers are for the tests to prove.
[checks]
enabled = false
[dns]
nameservers = ["127.0.0.1:9"]
[listeners]
smtp = ["127.0.0.1:2525"]
TOML
}
