# The relay's [[account]] for examples/bench_upstream.rs, pacing lifted (sourced).
#   bench_account WORK TOKEN_PORT UP_PORT CONNECTIONS
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
