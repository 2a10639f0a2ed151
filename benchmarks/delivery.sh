#!/usr/bin/env bash
# End-to-end benchmark: smtp-source → relay → upstream on loopback, beside Postfix relaying
# the same load to smtp-sink, in one run. Both queue durably (fsync on).
#
#   benchmarks/delivery.sh          # needs root, Debian's postfix package and python3
#
# The relay's upstream is examples/bench_upstream.rs: STARTTLS with certificate
# verification and AUTH XOAUTH2 with a token from its OAuth2 endpoint, like Exchange Online.
# Postfix sends plain SMTP without auth. Pacing is lifted (rate, daily recipients) and both
# use 20 parallel upstream connections (Postfix's default destination concurrency).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-10000}
SIZE=${SIZE:-2048}
CONNECTIONS=${CONNECTIONS:-20}
PF_PORT=10025 SINK_PORT=10027 RELAY_PORT=10026 UP_PORT=10028 TOKEN_PORT=10029
target=${CARGO_TARGET_DIR:-target}
relay_bin=${RELAY:-$target/release/smtprelay}   # RELAY=path compares another build

command -v smtp-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
cargo build --release --quiet --example bench_upstream
cargo build --release --quiet
# shellcheck source=benchmarks/work.sh
. benchmarks/work.sh
bench_work bench

# Postfix relays everything to smtp-sink instead of holding it.
benchmarks/postfix-anchor.sh "$PF_PORT" "$work/postfix"
postconf -c "$work/postfix/etc" -e "header_checks =" "relayhost = [127.0.0.1]:$SINK_PORT" \
    "default_destination_concurrency_limit = $CONNECTIONS" "smtp_tls_security_level = none"
postfix -c "$work/postfix/etc" reload >/dev/null
smtp-sink -u postfix -c "127.0.0.1:$SINK_PORT" 1000 > "$work/sink.out" &
pids+=($!)

mkdir "$work/up"
"$target/release/examples/bench_upstream" "$UP_PORT" "$TOKEN_PORT" "$work/up" > "$work/up.count" &
pids+=($!)
echo "bench-secret" > "$work/secret"
sleep 0.5
# shellcheck source=benchmarks/account.sh
. benchmarks/account.sh
{ bench_server "$work/relay" "$RELAY_PORT"
bench_account "$work" "$TOKEN_PORT" "$UP_PORT" "$CONNECTIONS"
} > "$work/relay.toml"
SMTPRELAY_TOKEN_KEY=$(openssl rand -hex 32) "$relay_bin" serve --config "$work/relay.toml" &
relay_pid=$!
pids+=($relay_pid)
sleep 1

queued() {   # files still queued in a directory tree
    find "$@" -type f 2>/dev/null | wc -l
}
end_to_end() {   # name port queue-dirs… → messages/s from the first submission to an empty queue
    local port=$1; shift
    local start end
    start=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@b.example -t sink@d.example "127.0.0.1:$port"
    local deadline=$((SECONDS + 600))
    while [ "$(queued "$@")" -gt 0 ]; do
        [ $SECONDS -lt $deadline ] || { echo "queue did not drain: $(queued "$@") left" >&2; exit 1; }
        sleep 0.05
    done
    end=$(date +%s.%N)
    python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}

echo "== smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE → relay → upstream, fsync on, $(nproc) cores"
pf=$(end_to_end "$PF_PORT" "$work/postfix/queue/incoming" "$work/postfix/queue/active" \
    "$work/postfix/queue/deferred" "$work/postfix/queue/maildrop")
# shellcheck source=benchmarks/proc.sh
. benchmarks/proc.sh
reset_peak "$relay_pid"
cpu_before=$(cpu_ms "$relay_pid")
relay=$(end_to_end "$RELAY_PORT" "$work/relay/spool/queue")
cpu=$(( $(cpu_ms "$relay_pid") - cpu_before ))
peak=$(status "$relay_pid" VmHWM)
kill "$(pgrep -f examples/bench_upstream)"
sleep 0.3
echo "postfix → smtp-sink (plain SMTP, no auth):          $pf msg/s"
echo "smtprelay → upstream (STARTTLS + XOAUTH2):           $relay msg/s, $(python3 -c "print(f'{$relay / $pf:.2f}')")x postfix, peak RSS $((peak / 1024)) MB"
echo "relay CPU: $cpu ms for $MESSAGES messages = $(python3 -c "print(f'{$cpu * 1000 / $MESSAGES:.0f}')") µs/message"
echo "upstream received: $(cat "$work/up.count")"
