#!/usr/bin/env bash
# Builds the deb and rpm packages into target/debian and target/generate-rpm.
#
#   packaging/build.sh
#
# Installs cargo-deb and cargo-generate-rpm from crates.io when they are missing (versions
# pinned: newer ones may need a newer rustc than the project's 1.95).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm@0.21.1

cargo build --release --locked
# The packaged binary keeps its symbols (names in backtraces) but not the line tables
# [profile.release] keeps for benchmarks and profiling: 12 MB instead of 62 MB.
mkdir -p target/package
objcopy --strip-debug target/release/smtprelay target/package/smtprelay
rm -rf target/docs
target/package/smtprelay generate-docs target/docs
gzip -9n target/docs/man/*.1
rm -f target/debian/*.deb target/generate-rpm/*.rpm
cargo deb --no-build --no-strip --locked
cargo generate-rpm
ls -l target/debian/*.deb target/generate-rpm/*.rpm
