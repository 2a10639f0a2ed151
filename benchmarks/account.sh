# The relay's configuration for the benchmarks (sourced).
#   bench_server STATE_DIR PORT                     [server] … [log]: one plain listener, fsync on
#   bench_account WORK TOKEN_PORT UP_PORT CONNECTIONS
#                                                   [[account]] for examples/bench_upstream.rs,
#                                                   pacing lifted
bench_server() {
    cat <<CONF
[server]
hostname = "relay.bench.internal"
state_dir = "$1"
[[listen]]
address = "127.0.0.1:$2"
auth = "none"
[access]
client_rate = "1000000/s"
[queue]
fsync = true
[log]
level = "warn"
CONF
}

bench_account() {
    cat <<CONF
[[account]]
name = "bench"
provider = "generic"
token_endpoint = "http://127.0.0.1:$2/token"
client_id = "bench"
flow = "client_credentials"
client_secret_file = "$1/secret"
mailbox = "relay@bench.internal"
[account.upstream]
host = "localhost"
port = $3
ca_file = "$1/up/ca.pem"
max_connections = $4
rate = "100000000/min"
daily_recipients = 100000000
CONF
}
