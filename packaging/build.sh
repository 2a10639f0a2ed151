#!/usr/bin/env bash
# Builds the deb and rpm packages into target/debian and target/rpm.
#
#   packaging/build.sh
#
# The deb with cargo-deb (Cargo.toml's [package.metadata.deb]), installed from crates.io when
# missing (pinned: newer ones may need a newer rustc than the project's 1.95); the rpm with
# rpmbuild from packaging/rpm/smtprelay.spec (Debian's rpm package, installed when missing:
# a binary, where cargo-generate-rpm took three minutes to compile on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
command -v rpmbuild >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null
}

cargo build --release --locked
# The packaged binary keeps its symbols (names in backtraces) but not the line tables
# [profile.release] keeps for benchmarks and profiling: 12 MB instead of 62 MB.
mkdir -p target/package
objcopy --strip-debug target/release/smtprelay target/package/smtprelay
rm -rf target/docs
target/package/smtprelay generate-docs target/docs
gzip -9n target/docs/man/*.1
rm -rf target/debian/*.deb target/rpm
cargo deb --no-build --no-strip --locked
package_field() { # package_field NAME: a string field of Cargo.toml's [package]
    sed -n "/^\[package\]/,/^\[/s/^$1 = \"\(.*\)\"\$/\1/p" Cargo.toml
}
rpmbuild -bb --quiet \
    --define "_topdir $PWD/target/rpm/build" \
    --define "_rpmdir $PWD/target/rpm" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "srcroot $PWD" \
    --define "pkg_version $(package_field version)" \
    --define "pkg_license $(package_field license)" \
    --define "pkg_summary $(package_field description)" \
    packaging/rpm/smtprelay.spec
ls -l target/debian/*.deb target/rpm/*.rpm
