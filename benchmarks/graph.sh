#!/usr/bin/env bash
# Graph benchmark: smtp-source → relay → examples/bench_upstream.rs, once with the account on
# SMTP (STARTTLS + XOAUTH2) and once on Microsoft Graph sendMail (HTTPS, bearer token, base64
# MIME), same load, same connection count, fsync on. Prints messages/s and the relay's CPU
# per message for each.
#
#   benchmarks/graph.sh              # needs Debian's postfix package (smtp-source), python3
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-5000}
SIZE=${SIZE:-2048}
CONNECTIONS=${CONNECTIONS:-4}
RELAY_PORT=10046 UP_PORT=10048 TOKEN_PORT=10049 GRAPH_PORT=10047

command -v smtp-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
cargo build --release --quiet --example bench_upstream
cargo build --release --quiet
work=$(mktemp -d /var/tmp/smtprelay-graph.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/up"
target/release/examples/bench_upstream "$UP_PORT" "$TOKEN_PORT" "$work/up" "$GRAPH_PORT" > "$work/up.count" &
pids+=($!)
echo "bench-secret" > "$work/secret"
chmod 600 "$work/secret"
sleep 0.5
# shellcheck source=benchmarks/account.sh
. benchmarks/account.sh
# shellcheck source=benchmarks/proc.sh
. benchmarks/proc.sh

run() {   # transport-keys → "msg/s cpu-µs/msg"
    local state="$work/relay-$RANDOM"
    { bench_server "$state" "$RELAY_PORT"
    # The transport's keys belong to [[account]], before its upstream table.
    bench_account "$work" "$TOKEN_PORT" "$UP_PORT" "$CONNECTIONS" |
        KEYS="$1" awk '/^\[account.upstream\]/ { print ENVIRON["KEYS"] } { print }'
    } > "$work/relay.toml"
    SMTPRELAY_TOKEN_KEY=$(openssl rand -hex 32) target/release/smtprelay serve --config "$work/relay.toml" &
    local relay=$!
    sleep 1
    local cpu_before start end
    cpu_before=$(cpu_ms "$relay")
    start=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@b.example -t sink@d.example "127.0.0.1:$RELAY_PORT"
    local deadline=$((SECONDS + 600))
    while [ "$(find "$state/spool/queue" -type f | wc -l)" -gt 0 ]; do
        [ $SECONDS -lt $deadline ] || { echo "queue did not drain" >&2; exit 1; }
        sleep 0.05
    done
    end=$(date +%s.%N)
    local cpu=$(( $(cpu_ms "$relay") - cpu_before ))
    kill "$relay"; wait "$relay" 2>/dev/null || true
    python3 -c "print(f'{$MESSAGES / ($end - $start):.0f} msg/s, relay CPU {$cpu * 1000 / $MESSAGES:.0f} µs/message')"
}

echo "== smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE → relay ($CONNECTIONS connections) → upstream, fsync on, $(nproc) cores"
echo "SMTP  (STARTTLS + XOAUTH2):        $(run 'transport = "smtp"')"
echo "Graph (HTTPS sendMail, base64):    $(run "transport = \"graph\"
graph_endpoint = \"https://localhost:$GRAPH_PORT/v1.0\"")"
kill "$(pgrep -f examples/bench_upstream)"
sleep 0.3
echo "upstream received: $(cat "$work/up.count") (both runs)"
