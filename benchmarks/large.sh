#!/usr/bin/env bash
# Large messages: scans of 10, 30, 100 and 150 MB (MIME: a line of text and a base64 PDF)
# sent to the relay, one at a time and four at once, and relayed to examples/bench_upstream.rs
# over SMTP (STARTTLS + XOAUTH2) and over Microsoft Graph (a draft and an upload session:
# the messages are over sendMail's 4 MB); beside Postfix relaying the same files to smtp-sink.
# For each: peak anonymous memory (RssAnon, sampled every 5 ms: the heap, not the page cache
# the spooled files sit in; for Postfix summed over its processes), MB/s from the first byte
# sent to an empty queue, and CPU per MB (intake and delivery). fsync on.
# Goal (issue 23): peak RssAnon under 64 MB for one 150 MB message and for four 30 MB at
# once, on each transport; memory that does not grow with the message, as Postfix's.
#
#   benchmarks/large.sh                      # needs root, Debian's postfix package, python3
#   SIZES="30 150" AT_ONCE=4 TRANSPORTS=graph POSTFIX=0 benchmarks/large.sh
#   RELAY=/path/to/other/smtprelay benchmarks/large.sh    # another build, for before/after
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"10 30 100 150"}       # MB (10^6 bytes) of MIME
AT_ONCE=${AT_ONCE:-"1 4"}
TRANSPORTS=${TRANSPORTS:-"smtp graph"}
POSTFIX=${POSTFIX:-1}
CONNECTIONS=${CONNECTIONS:-4}           # max_connections, the default
PF_PORT=10065 SINK_PORT=10067 RELAY_PORT=10066 UP_PORT=10068 TOKEN_PORT=10069 GRAPH_PORT=10070
target=${CARGO_TARGET_DIR:-target}

command -v smtp-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
cargo build --release --quiet --example bench_upstream
cargo build --release --quiet
RELAY=${RELAY:-$target/release/smtprelay}
# shellcheck source=benchmarks/work.sh
. benchmarks/work.sh
bench_work large

# shellcheck source=benchmarks/account.sh
. benchmarks/account.sh

mkdir "$work/up"
"$target/release/examples/bench_upstream" "$UP_PORT" "$TOKEN_PORT" "$work/up" "$GRAPH_PORT" > "$work/up.count" &
upstream=$!
pids+=($upstream)
echo "bench-secret" > "$work/secret"
chmod 600 "$work/secret"

if [ "$POSTFIX" = 1 ]; then
    # Its syslog stand-in outlives the script: it must not hold our output open.
    benchmarks/postfix-anchor.sh "$PF_PORT" "$work/postfix" > "$work/anchor.log" 2>&1 ||
        { cat "$work/anchor.log"; exit 1; }
    postconf -c "$work/postfix/etc" -e "header_checks =" "relayhost = [127.0.0.1]:$SINK_PORT" \
        "default_destination_concurrency_limit = $CONNECTIONS" "smtp_tls_security_level = none" \
        "message_size_limit = 0" "mailbox_size_limit = 0"
    postfix -c "$work/postfix/etc" reload >/dev/null
    smtp-sink -u postfix -c "127.0.0.1:$SINK_PORT" 1000 > "$work/sink.out" &
    pids+=($!)
fi

for mb in $SIZES; do
    python3 benchmarks/large_message.py make "$work/m$mb" $((mb * 1000000))
done

queued() { find "$@" -type f 2>/dev/null | wc -l; }
drain() {   # queue-dirs… : waits until they are empty
    local deadline=$((SECONDS + 900))
    while [ "$(queued "$@")" -gt 0 ]; do
        [ $SECONDS -lt $deadline ] || { echo "queue did not drain" >&2; exit 1; }
        sleep 0.05
    done
}
report() {   # name mb n seconds cpu-ms peak-kB
    python3 -c "
name, mb, n, secs, cpu, peak = '$1', $2, $3, $4, $5, $6
print(f'{name:<34} {mb:>4} MB x {n}: {mb * n / secs:6.1f} MB/s, CPU {cpu / (mb * n):5.1f} ms/MB, peak RssAnon {peak / 1024:6.1f} MB')"
}
measure() {   # name pid tree|"" port mb n queue-dirs… : sends, drains, reports
    local name=$1 pid=$2 tree=$3 port=$4 mb=$5 n=$6
    shift 6
    local stop="$work/stop.$RANDOM"
    python3 benchmarks/anon.py peak "$stop" "$pid" $tree > "$stop.peak" &
    local sampler=$!
    local cpu_before start end
    cpu_before=$(python3 benchmarks/anon.py cpu "$pid" $tree)
    start=$(date +%s.%N)
    python3 benchmarks/large_message.py send "$port" "$work/m$mb" "$n"
    drain "$@"
    end=$(date +%s.%N)
    local cpu=$(( $(python3 benchmarks/anon.py cpu "$pid" $tree) - cpu_before ))
    touch "$stop"
    wait "$sampler"
    report "$name" "$mb" "$n" "$(python3 -c "print($end - $start)")" "$cpu" "$(cat "$stop.peak")"
}

relay_run() {   # transport mb n
    local state="$work/relay-$RANDOM" keys='transport = "smtp"'
    [ "$1" = graph ] && keys="transport = \"graph\"
graph_endpoint = \"https://localhost:$GRAPH_PORT/v1.0\""
    { bench_server "$state" "$RELAY_PORT" | sed "s/^level = .*/level = \"${LOG:-warn}\"/" |
        awk '{ print } /^\[server\]/ { print "max_message_size = \"160MiB\"" }'
      bench_account "$work" "$TOKEN_PORT" "$UP_PORT" "$CONNECTIONS" |
        KEYS="$keys" awk '/^\[account.upstream\]/ { print ENVIRON["KEYS"] } { print }'
    } > "$work/relay.toml"
    SMTPRELAY_TOKEN_KEY=$(openssl rand -hex 32) "$RELAY" serve --config "$work/relay.toml" &
    local relay=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$RELAY_PORT") 2>/dev/null && break
        sleep 0.05
    done
    local label="smtprelay → upstream over SMTP"
    [ "$1" = graph ] && label="smtprelay → upstream over Graph"
    measure "$label" "$relay" "" "$RELAY_PORT" "$2" "$3" "$state/spool/queue"
    kill "$relay"; wait "$relay" 2>/dev/null || true
    rm -rf "$state"
}

echo "== large messages: relay ($CONNECTIONS connections) → upstream, fsync on, $(nproc) cores, $RELAY"
for n in $AT_ONCE; do
    for mb in $SIZES; do
        if [ "$POSTFIX" = 1 ]; then
            master=$(head -1 "$work/postfix/queue/pid/master.pid" | tr -d ' ')
            q="$work/postfix/queue"
            measure "postfix → smtp-sink" "$master" tree "$PF_PORT" "$mb" "$n" \
                "$q/incoming" "$q/active" "$q/deferred" "$q/maildrop"
        fi
        for transport in $TRANSPORTS; do
            relay_run "$transport" "$mb" "$n"
        done
    done
done
kill "$upstream"; wait "$upstream" 2>/dev/null || true
echo "upstream received: $(cat "$work/up.count") messages (SMTP and Graph)"
