#!/usr/bin/env bash
# Builds the deb and rpm packages into target/debian and target/generate-rpm.
#
#   packaging/build.sh
#
# Installs cargo-deb and cargo-generate-rpm from crates.io when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm

cargo build --release --locked
rm -rf target/docs
target/release/smtprelay generate-docs target/docs
gzip -9n target/docs/man/*.1
cargo deb --no-build --locked
cargo generate-rpm
ls -l target/debian/*.deb target/generate-rpm/*.rpm
