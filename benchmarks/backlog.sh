#!/usr/bin/env bash
# Backlog benchmark: a relay restarted over a large queue. For each backlog size it queues
# the messages with no [[account]] (mail is accepted and held), stops the relay, adds the
# account, starts it again and measures
#   1. time from start to listening (the spool is read before the port opens),
#   2. RSS once listening, and the peak while draining,
#   3. the drain rate to examples/bench_upstream.rs (STARTTLS + XOAUTH2), pacing lifted,
# so the cost per message can be compared between sizes (it should stay flat).
#
# Then, for each of MEMORY_SIZES, the memory a queued message costs: the queue is written
# straight into a spool (examples/fill_spool.rs, the intake's file format), the relay starts
# with an account that cannot send (its token endpoint is absent, so everything stays queued),
# and once the scheduler has read the whole queue (its backlog count in /status.json equals
# the queue) it reports
#   4. time from start to listening, and to the whole queue scheduled,
#   5. anonymous memory (RssAnon) per queued message, over that of the same relay with an
#      empty queue.
#
#   benchmarks/backlog.sh              # needs Debian's postfix package (smtp-source), python3
#   SIZES="10000 100000" benchmarks/backlog.sh
#   SIZES="" MEMORY_SIZES="100000 1000000" benchmarks/backlog.sh   # memory only
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES-"10000 100000"}
MEMORY_SIZES=${MEMORY_SIZES-"100000 1000000"}
ADMIN_PORT=10037
target=${CARGO_TARGET_DIR:-target}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}
CONNECTIONS=${CONNECTIONS:-20}
RELAY_PORT=10036 UP_PORT=10038 TOKEN_PORT=10039

[ -z "$SIZES" ] || command -v smtp-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
cargo build --release --quiet --example bench_upstream --example fill_spool
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
$target/release/examples/bench_upstream "$UP_PORT" "$TOKEN_PORT" "$work/up" > "$work/up.count" &
pids+=($!)
echo "bench-secret" > "$work/secret"
export SMTPRELAY_TOKEN_KEY
SMTPRELAY_TOKEN_KEY=$(openssl rand -hex 32)
sleep 0.5

server() {   # state-dir: [server] and the one listener
    cat <<CONF
[server]
hostname = "relay.bench.internal"
state_dir = "$1"
[[listen]]
address = "127.0.0.1:$RELAY_PORT"
auth = "none"
CONF
}

config() {   # state-dir with-account?
    server "$1"
    cat <<CONF
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

[ -z "$SIZES" ] || echo "== backlog drain, $(nproc) cores, ${SIZE}-byte messages, $CONNECTIONS upstream connections"
for n in $SIZES; do
    state="$work/state-$n"
    config "$state" no > "$work/hold-$n.toml"
    config "$state" yes > "$work/drain-$n.toml"
    $target/release/smtprelay serve --config "$work/hold-$n.toml" &
    pid=$!
    listening "$(date +%s.%N)" > /dev/null
    smtp-source -s "$SESSIONS" -m "$n" -l "$SIZE" -f bench@b.example -t sink@d.example "127.0.0.1:$RELAY_PORT"
    kill "$pid"; wait "$pid" || true
    queued=$(find "$state/spool/queue" -name '*.msg' | wc -l)

    start=$(date +%s.%N)
    $target/release/smtprelay serve --config "$work/drain-$n.toml" &
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
[ -z "$SIZES" ] || echo "upstream received: $(kill -TERM "${pids[0]}"; sleep 0.3; cat "$work/up.count")"

# The memory a queued message costs, with nothing sent.
memory_config() {   # state-dir
    server "$1"
    cat <<CONF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[queue]
max_messages = 100000000
[log]
level = "warn"
[[account]]
name = "stuck"
provider = "generic"
token_endpoint = "http://127.0.0.1:9/token"
client_id = "bench"
flow = "client_credentials"
client_secret_file = "$work/secret"
mailbox = "relay@bench.internal"
max_backlog = 100000000
CONF
}

backlog() {   # the stuck account's counted backlog, or -1 before it is counted
    curl -sf "http://127.0.0.1:$ADMIN_PORT/status.json" 2>/dev/null |
        python3 -c 'import json,sys; q=json.load(sys.stdin)["accounts"][0]["backlog"]["queued"]; print(-1 if q is None else q)' 2>/dev/null ||
        echo -1
}

measure() {   # state-dir count: prints "listening scheduled rss_anon_kB"
    local state=$1 n=$2 start ready pid
    memory_config "$state" > "$work/memory.toml"
    start=$(date +%s.%N)
    "$target/release/smtprelay" serve --config "$work/memory.toml" &
    pid=$!
    ready=$(listening "$start")
    until [ "$(backlog)" -ge "$n" ] 2>/dev/null; do sleep 0.05; done
    scheduled=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
    anon=$(status "$pid" RssAnon)
    kill "$pid"; wait "$pid" || true
    echo "$ready $scheduled $anon"
}

if [ -n "$MEMORY_SIZES" ]; then
    echo "== memory per queued message ($(nproc) cores)"
    read -r _ _ empty < <(measure "$work/memory-empty" 0)
    echo "empty queue: RssAnon $((empty / 1024)) MB"
    for n in $MEMORY_SIZES; do
        state="$work/memory-$n"
        "$target/release/examples/fill_spool" "$state/spool" "$n" "$SIZE"
        read -r ready scheduled anon < <(measure "$state" "$n")
        python3 - "$n" "$ready" "$scheduled" "$anon" "$empty" <<'PY'
import sys
n, ready, scheduled, anon, empty = sys.argv[1:]
n, anon, empty = int(n), int(anon), int(empty)
print(f"{n:>8} queued: listening after {float(ready):.2f} s, all scheduled after "
      f"{float(scheduled):.2f} s; RssAnon {anon // 1024} MB, "
      f"{(anon - empty) * 1024 / n:.0f} B per queued message")
PY
        rm -rf "$state"
    done
fi
