#!/usr/bin/env bash
# Makes the fresh Debian root packaging/test-install.sh installs the deb into:
#
#   packaging/prepare-root.sh DIR
#
# debootstrap --variant=minbase, what every real machine has and debootstrap leaves out
# (/etc/hosts), the mirror's package lists, and the packages the tests install later
# downloaded but not installed (the deb's dependencies, and systemd for the unit test): the
# deb still goes into a root without systemd, as in a minimal container, and nothing later
# needs the network. All of it waits on the mirror, not the CPU, so .ci/run makes the root
# while the tests compile.
#
# Needs root (chroot) and Debian's mirror; installs debootstrap when missing.
set -euo pipefail

root=${1:?usage: packaging/prepare-root.sh DIR}
suite=${SMTPRELAY_TEST_SUITE:-bookworm}
mirror=${SMTPRELAY_TEST_MIRROR:-http://deb.debian.org/debian}

command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

mkdir -p "$root"
chmod 0755 "$root" # it becomes /, which every user must be able to enter
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -20 "$root.log"; exit 1; }
rm -f "$root.log"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
chroot "$root" apt-get update -qq
# The deb's dependencies (Cargo.toml's depends, and $auto's libssl3) as apt installs them,
# and the unit test's systemd as test-install.sh installs it.
download() { DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --download-only "$@" >/dev/null; }
download ca-certificates procps libssl3
download --no-install-recommends systemd
