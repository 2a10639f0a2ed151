#!/usr/bin/env bash
# Backlog benchmark: a relay restarted over a large queue. For each backlog size it queues
# the messages with no [[account]] (mail is accepted and held), stops the relay, adds the
# account, starts it again and measures
#   1. time from start to listening (the spool is read before the port opens),
#   2. RSS once listening, and the peak while draining,
#   3. the drain rate to examples/bench_upstream.rs (STARTTLS + XOAUTH2), pacing lifted,
# so the cost per message can be compared between sizes (it should stay flat).
#
#   benchmarks/backlog.sh              # needs Debian's postfix package (smtp-source), python3
#   SIZES="10000 100000" benchmarks/backlog.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"10000 100000"}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}
CONNECTIONS=${CONNECTIONS:-20}
RELAY_PORT=10036 UP_PORT=10038 TOKEN_PORT=10039

command -v smtp-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
cargo build --release --quiet --example bench_upstream
cargo build --release --quiet
work=$(mktemp -d /var/tmp/smtprelay-backlog.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=benchmarks/proc.sh
. benchmarks/proc.sh
# shellcheck source=benchmarks/account.sh
. benchmarks/account.sh

mkdir "$work/up"
target/release/examples/bench_upstream "$UP_PORT" "$TOKEN_PORT" "$work/up" > "$work/up.count" &
pids+=($!)
echo "bench-secret" > "$work/secret"
export SMTPRELAY_TOKEN_KEY
SMTPRELAY_TOKEN_KEY=$(openssl rand -hex 32)
sleep 0.5

config() {   # state-dir with-account?
    cat <<CONF
[server]
hostname = "relay.bench.internal"
state_dir = "$1"
[[listen]]
address = "127.0.0.1:$RELAY_PORT"
auth = "none"
[access]
client_rate = "1000000/s"
[admin]
listen = ""
[log]
level = "warn"
CONF
    [ "$2" = yes ] || return 0
    bench_account "$work" "$TOKEN_PORT" "$UP_PORT" "$CONNECTIONS"
}

listening() {   # waits until the relay's port answers; prints the seconds it took since $1
    local start=$1
    until (exec 3<>"/dev/tcp/127.0.0.1/$RELAY_PORT") 2>/dev/null; do sleep 0.005; done
    python3 -c "import time; print(f'{time.time() - $start:.2f}')"
}

echo "== backlog drain, $(nproc) cores, ${SIZE}-byte messages, $CONNECTIONS upstream connections"
for n in $SIZES; do
    state="$work/state-$n"
    config "$state" no > "$work/hold-$n.toml"
    config "$state" yes > "$work/drain-$n.toml"
    target/release/smtprelay serve --config "$work/hold-$n.toml" &
    pid=$!
    listening "$(date +%s.%N)" > /dev/null
    smtp-source -s "$SESSIONS" -m "$n" -l "$SIZE" -f bench@b.example -t sink@d.example "127.0.0.1:$RELAY_PORT"
    kill "$pid"; wait "$pid" || true
    queued=$(find "$state/spool/queue" -name '*.msg' | wc -l)

    start=$(date +%s.%N)
    target/release/smtprelay serve --config "$work/drain-$n.toml" &
    pid=$!
    pids+=($pid)
    ready=$(listening "$start")
    rss=$(status "$pid" VmRSS)
    deadline=$((SECONDS + 1200))
    while [ "$(find "$state/spool/queue" -name '*.msg' | wc -l)" -gt 0 ]; do
        [ $SECONDS -lt $deadline ] || { echo "queue did not drain" >&2; exit 1; }
        sleep 0.2
    done
    end=$(date +%s.%N)
    peak=$(status "$pid" VmHWM)
    kill "$pid"; wait "$pid" || true
    python3 - "$n" "$queued" "$ready" "$rss" "$peak" "$start" "$end" <<'PY'
import sys
n, queued, ready, rss, peak, start, end = sys.argv[1:]
queued, ready, rss, peak = int(queued), float(ready), int(rss), int(peak)
elapsed = float(end) - float(start)
drain = elapsed - ready
print(f"{int(n):>7} queued ({queued} on disk): listening after {ready:.2f} s "
      f"({ready / queued * 1e6:.1f} µs/message), RSS {rss // 1024} MB listening, "
      f"peak {peak // 1024} MB ({peak * 1024 / queued:.0f} B/message), "
      f"drained in {drain:.1f} s = {queued / drain:.0f} msg/s")
PY
done
echo "upstream received: $(kill -TERM "${pids[0]}"; sleep 0.3; cat "$work/up.count")"
