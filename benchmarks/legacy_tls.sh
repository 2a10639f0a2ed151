#!/usr/bin/env bash
# What the legacy TLS profile (OpenSSL) costs beside the modern one (rustls): one relay with a
# legacy and a modern STARTTLS listener on one RSA certificate, the same TLS 1.2 load
# (ECDHE-RSA-AES128-GCM-SHA256, which both speak) into each, one after the other in the same
# run; then what old devices actually use on the legacy listener (TLS 1.2 RSA key exchange
# with AES-CBC, and TLS 1.0).
#
#   benchmarks/legacy_tls.sh        # SESSIONS=2000 PER_SESSION=1 PARALLEL=4 ROUNDS=2
#
# Measures, per listener: messages/s, and the relay's CPU (user + system) per message, which
# is what the profile changes (the Python clients, not the relay, limit messages/s here).
# Goal: legacy CPU per message <= 1.3x modern.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-2000}
PER_SESSION=${PER_SESSION:-1}
PARALLEL=${PARALLEL:-4}
ROUNDS=${ROUNDS:-2}

cargo build --release --quiet
work=$(mktemp -d /var/tmp/smtprelay-tls-bench.XXXXXX)
relay_pid=""
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
legacy_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
modern_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/relay.toml" <<TOML
[server]
hostname = "relay.bench.internal"
state_dir = "$work/relay"
max_connections = 2000
max_connections_per_client = 2000
[[listen]]
address = "127.0.0.1:$legacy_port"
tls = "starttls"
tls_profile = "legacy"
auth = "none"
[[listen]]
address = "127.0.0.1:$modern_port"
tls = "starttls"
auth = "none"
[tls]
certificate = "$work/cert.pem"
private_key = "$work/key.pem"
[access]
client_rate = "1000000/s"
[admin]
listen = ""
[log]
level = "warn"
TOML
target/release/smtprelay serve --config "$work/relay.toml" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$modern_port) 2>/dev/null && break
    sleep 0.1
done

# shellcheck source=benchmarks/proc.sh
. benchmarks/proc.sh

run() { # run PORT VERSION CIPHERS -> "msg/s cpu_ms_per_message"
    local before after out sent secs
    before=$(cpu_ms "$relay_pid")
    out=$(python3 benchmarks/tls_clients.py "$1" "$work/cert.pem" "$2" "$3" "$SESSIONS" "$PER_SESSION" "$PARALLEL")
    after=$(cpu_ms "$relay_pid")
    read -r sent secs <<<"$out"
    python3 -c "print(f'{$sent / $secs:.0f} {($after - $before) / $sent:.3f}')"
}

echo "== $SESSIONS sessions x $PER_SESSION message(s) of 2 KiB, $PARALLEL clients in parallel, fsync on, $(nproc) cores"
same=ECDHE-RSA-AES128-GCM-SHA256
for round in $(seq "$ROUNDS"); do
    read -r legacy_rate legacy_cpu <<<"$(run "$legacy_port" 1.2 "$same")"
    read -r modern_rate modern_cpu <<<"$(run "$modern_port" 1.2 "$same")"
    ratio=$(python3 -c "print(f'{$legacy_cpu / $modern_cpu:.2f}')")
    echo "round $round, TLS 1.2 $same:"
    echo "  modern (rustls):  $modern_rate msg/s, relay CPU $modern_cpu ms/message"
    echo "  legacy (OpenSSL): $legacy_rate msg/s, relay CPU $legacy_cpu ms/message (${ratio}x modern; goal <= 1.3x)"
done
read -r rate cpu <<<"$(run "$legacy_port" 1.2 AES128-SHA)"
echo "legacy, TLS 1.2 RSA key exchange AES128-SHA: $rate msg/s, relay CPU $cpu ms/message"
read -r rate cpu <<<"$(run "$legacy_port" 1.0 "")"
echo "legacy, TLS 1.0 (ECDHE-RSA-AES128-SHA):      $rate msg/s, relay CPU $cpu ms/message"
queued=$(find "$work/relay/spool/queue" -name '*.msg' | wc -l)
echo "queued: $queued"
