#!/usr/bin/env bash
# Intake benchmark: smtprelay against Postfix (the anchor), both durable, in one run.
#
#   benchmarks/intake.sh            # needs root, Debian's postfix package and python3
#
# Measures
#   1. messages/s for `smtp-source -s 20 -m 10000 -l 2048` into each (goal: relay >= 1.5x Postfix)
#   2. the relay's peak RSS during that run (goal: < 50 MB)
#   3. RSS per idle connection, 1,000 of them (goal: < 32 KB)
#   4. RSS growth while receiving one 100 MB message (goal: < 16 MB)
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-10000}
SIZE=${SIZE:-2048}
PF_PORT=${PF_PORT:-10025}
RELAY_PORT=${RELAY_PORT:-10026}

command -v smtp-source >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
}
cargo build --release --quiet
target=${CARGO_TARGET_DIR:-target}
relay=${RELAY:-$target/release/smtprelay}   # RELAY=path compares another build
work=$(mktemp -d /var/tmp/smtprelay-bench.XXXXXX)
chmod 755 "$work"   # Postfix daemons run as the postfix user
relay_pid=""
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
    postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

benchmarks/postfix-anchor.sh "$PF_PORT" "$work/postfix"

cat > "$work/relay.toml" <<EOF
[server]
hostname = "relay.bench.internal"
state_dir = "$work/relay"
max_connections = 2000
max_connections_per_client = 2000       # the idle-connection test opens 1,000 from 127.0.0.1
max_message_size = "150MiB"
[[listen]]
address = "127.0.0.1:$RELAY_PORT"
auth = "none"
[access]
client_rate = "1000000/s"
[queue]
fsync = true
[log]
level = "warn"
EOF
"$relay" serve --config "$work/relay.toml" &
relay_pid=$!
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$RELAY_PORT) 2>/dev/null && break
    sleep 0.1
done

# shellcheck source=benchmarks/proc.sh
. benchmarks/proc.sh

rate() {   # port -> messages/s
    local start end
    start=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@b.example -t sink@d.example "127.0.0.1:$1"
    end=$(date +%s.%N)
    python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}

echo "== smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, fsync on, $(nproc) cores"
pf_rate=$(rate "$PF_PORT")
reset_peak "$relay_pid"
relay_rate=$(rate "$RELAY_PORT")
relay_peak=$(status "$relay_pid" VmHWM)
pf_held=$(find "$work/postfix/queue/hold" -type f | wc -l)
relay_held=$("$relay" queue list --json --config "$work/relay.toml" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
ratio=$(python3 -c "print(f'{$relay_rate / $pf_rate:.2f}')")
echo "postfix:   $pf_rate msg/s ($pf_held queued)"
echo "smtprelay: $relay_rate msg/s ($relay_held queued), ${ratio}x postfix, peak RSS $((relay_peak / 1024)) MB"

echo "== 1000 idle connections"
idle_kb=$(python3 benchmarks/idle.py "$RELAY_PORT" 1000 "$relay_pid")
echo "smtprelay: $idle_kb"

echo "== one 100 MB message"
reset_peak "$relay_pid"
before=$(status "$relay_pid" VmRSS)
python3 benchmarks/big.py "$RELAY_PORT" $((100 * 1024 * 1024))
peak=$(status "$relay_pid" VmHWM)
echo "smtprelay: RSS before ${before} kB, peak during ${peak} kB, growth $(((peak - before) / 1024)) MB"
