#!/usr/bin/env bash
# What sharing budgets and connections through Redis costs: one node alone (no [cluster]),
# one node with [cluster], and three nodes with [cluster] sending as the same mailbox, each
# smtp-source → relay(s) → upstream on loopback with pacing lifted, fsync on. Reports
# messages/s from the first submission to empty queues, Redis round trips per message (from
# /metrics) and Redis's round-trip time (redis-cli --latency), so the latency the cluster
# adds to a message is round trips × RTT.
#
#   benchmarks/cluster.sh          # needs Debian's postfix (smtp-source) and redis-server
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-6000}
SIZE=${SIZE:-2048}
CONNECTIONS=${CONNECTIONS:-20}
UP_PORT=10048 TOKEN_PORT=10049 REDIS_PORT=10050

command -v smtp-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
command -v redis-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
cargo build --release --quiet --example bench_upstream
cargo build --release --quiet
work=$(mktemp -d /var/tmp/smtprelay-cluster-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
mkdir "$work/up"
target/release/examples/bench_upstream "$UP_PORT" "$TOKEN_PORT" "$work/up" > "$work/up.count" &
pids+=($!)
echo "bench-secret" > "$work/secret"
chmod 600 "$work/secret"
sleep 0.5
# shellcheck source=benchmarks/account.sh
. benchmarks/account.sh
key=$(openssl rand -hex 32)

# start_node NAME SMTP_PORT ADMIN_PORT CLUSTER(yes|no) NODES
start_node() {
    local dir="$work/$1"
    mkdir -p "$dir"
    { bench_server "$dir/state" "$2"
      printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$3"
      bench_account "$work" "$TOKEN_PORT" "$UP_PORT" "$CONNECTIONS"
      if [ "$4" = yes ]; then
          printf '[cluster]\nredis_url = "redis://127.0.0.1:%s/0"\nnode_name = "%s"\nnodes = %s\nkey_prefix = "%s:"\n' \
              "$REDIS_PORT" "$1" "$5" "$6"
      fi
    } > "$dir/relay.toml"
    SMTPRELAY_TOKEN_KEY=$key target/release/smtprelay serve --config "$dir/relay.toml" &
    pids+=($!)
}
calls() {   # ADMIN_PORT → Redis round trips so far
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^smtprelay_cluster_redis_calls_total /{print $2}'
}
queued() {
    find "$@" -type f 2>/dev/null | wc -l
}
# run "PORT…" "QUEUE-DIR…": MESSAGES split over the ports at once → messages/s
run() {
    local ports=($1) dirs=($2) start end per
    per=$((MESSAGES / ${#ports[@]}))
    start=$(date +%s.%N)
    for port in "${ports[@]}"; do
        smtp-source -s "$((SESSIONS / ${#ports[@]}))" -m "$per" -l "$SIZE" \
            -f bench@b.example -t sink@d.example "127.0.0.1:$port" &
    done
    wait_sources
    local deadline=$((SECONDS + 600))
    while [ "$(queued "${dirs[@]}")" -gt 0 ]; do
        [ $SECONDS -lt $deadline ] || { echo "queue did not drain" >&2; exit 1; }
        sleep 0.05
    done
    end=$(date +%s.%N)
    python3 -c "print(f'{$per * ${#ports[@]} / ($end - $start):.0f}')"
}
wait_sources() {
    while pgrep -x smtp-source >/dev/null; do sleep 0.02; done
}
# wait_shared ADMIN_PORT…: until every node counts in Redis
wait_shared() {
    for port in "$@"; do
        for _ in $(seq 100); do
            curl -s "http://127.0.0.1:$port/metrics" | grep -q '^smtprelay_cluster_budgets_shared 1' && break
            sleep 0.1
        done
    done
}

echo "== smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, pacing lifted, $CONNECTIONS connections for the mailbox, $(nproc) cores"

start_node alone 10041 10051 no 1 x
sleep 1
alone=$(run "10041" "$work/alone/state/spool/queue")
kill "${pids[-1]}"; sleep 0.5

start_node one 10042 10052 yes 1 one
sleep 1; wait_shared 10052
before=$(calls 10052)
one=$(run "10042" "$work/one/state/spool/queue")
one_calls=$(( $(calls 10052) - before ))
kill "${pids[-1]}"; sleep 0.5

for n in 1 2 3; do start_node "node$n" "1006$n" "1007$n" yes 3 three; done
sleep 1; wait_shared 10071 10072 10073
before=0; for n in 1 2 3; do before=$((before + $(calls "1007$n"))); done
three=$(run "10061 10062 10063" "$work/node1/state/spool/queue $work/node2/state/spool/queue $work/node3/state/spool/queue")
after=0; for n in 1 2 3; do after=$((after + $(calls "1007$n"))); done
three_calls=$((after - before))

latency=$(timeout 3 redis-cli -p "$REDIS_PORT" --latency --raw 2>/dev/null | tail -1 || true)
kill "$(pgrep -f examples/bench_upstream)"
sleep 0.3

echo "one node, no [cluster]:        $alone msg/s"
echo "one node with [cluster]:       $one msg/s, $(python3 -c "print(f'{$one_calls / $MESSAGES:.2f}')") Redis round trips per message"
echo "three nodes with [cluster]:    $three msg/s, $(python3 -c "print(f'{$three_calls / $MESSAGES:.2f}')") Redis round trips per message (heartbeats and lease renewals included)"
echo "Redis round trip (min max avg ms, redis-cli --latency, then samples): $latency"
echo "upstream received: $(cat "$work/up.count")"
