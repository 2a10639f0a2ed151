#!/usr/bin/env bash
# check-config on files with 40,000 and 80,000 unknown keys: the time must grow linearly
# (issue 12: it took 20 s for 40,000 when each problem's line was found by re-reading the file).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for n in 40000 80000; do
    python3 - "$dir/big$n.toml" "$n" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write('[[listen]]\naddress = "127.0.0.1:2525"\nauth = "none"\n[server]\n')
    for i in range(n):
        f.write(f"unknown_{i} = 1\n")
PY
    /usr/bin/time -f "$n unknown keys: %e s, %M KB max RSS" \
        target/release/smtprelay check-config --config "$dir/big$n.toml" 2>&1 >/dev/null | tail -1 || true
done
