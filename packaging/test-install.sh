#!/usr/bin/env bash
# Tests the packages packaging/build.sh made:
#   - the rpm's metadata, files, modes, conffile and scriptlets (rpm -qip, -qlp, --scripts);
#   - the deb installed into a fresh Debian root (debootstrap --variant=minbase): the system
#     user, modes, conffile, token key, enabled unit; then tests/installed_package.rs runs the
#     installed binary there as the service user (check-config, one message relayed to the
#     Exchange and Entra doubles); tests/installed_service.rs boots the root with
#     systemd-nspawn and runs the unit (start, relay, sandbox, reload, upgrade, stop); then
#     upgrade keeps key, tokens and queue, remove keeps configuration and state, purge
#     removes them and the user.
#
#   sudo packaging/test-install.sh [ROOT]
#
# ROOT is a root packaging/prepare-root.sh made (.ci/run makes it while the tests compile);
# without one, this script makes it. The root is used up: the script deletes it at the end.
# Needs root (chroot) and, without ROOT, Debian's mirror; installs debootstrap, rpm and
# systemd-container when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(ls target/debian/smtprelay_*.deb)
rpm=$(ls target/rpm/smtprelay-*.rpm)

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v rpm >/dev/null || missing+=(rpm)
command -v cpio >/dev/null || missing+=(cpio)   # unpacks the rpm to look at its binary
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

failures=0
check() { # check DESCRIPTION COMMAND...: runs the command, counts a failure
    if "${@:2}" >/dev/null; then
        echo "ok   $1"
    else
        echo "FAIL $1"
        failures=$((failures + 1))
    fi
}
installed_tests() { # installed_tests TEST DESCRIPTION: tests/TEST.rs against the root
    if SMTPRELAY_INSTALL_ROOT="$root" cargo test --locked --test "$1" -- --ignored 2>&1; then
        echo "ok   $2"
    else
        echo "FAIL $2"
        failures=$((failures + 1))
    fi
}
equals() { [ "$1" = "$2" ] || { echo "     got '$1', want '$2'" >&2; false; }; }

echo "== $rpm"
rpm_info=$(rpm -qip "$rpm")
rpm_files=$(rpm -qlp "$rpm")
rpm_modes=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm")
rpm_scripts=$(rpm -qp --scripts "$rpm")
check "rpm is named smtprelay" grep -q '^Name *: smtprelay' <<<"$rpm_info"
check "rpm has a license" grep -q '^License *: ' <<<"$rpm_info"
for file in /usr/bin/smtprelay /etc/smtprelay/smtprelay.toml /usr/lib/systemd/system/smtprelay.service \
    /usr/share/man/man1/smtprelay.1.gz /usr/share/man/man1/smtprelay-token-login.1.gz \
    /usr/share/bash-completion/completions/smtprelay /usr/share/doc/smtprelay/config-reference.toml; do
    check "rpm ships $file" grep -qx "$file" <<<"$rpm_files"
done
rpm_requires=$(rpm -qp --requires "$rpm")
check "rpm requires ca-certificates" grep -q '^ca-certificates' <<<"$rpm_requires"
check "rpm requires the unit's /usr/bin/kill" grep -q '^/usr/bin/kill' <<<"$rpm_requires"
check "rpm requires openssl-libs (the legacy TLS profile)" grep -q '^openssl-libs' <<<"$rpm_requires"
check "deb depends on libssl3 (the legacy TLS profile)" grep -Eq '(^|, )libssl3(t64)? ' \
    <<<"$(dpkg-deb -f "$deb" Depends)"
check "rpm: binary 0755" grep -qx -- '-rwxr-xr-x root:root /usr/bin/smtprelay' <<<"$rpm_modes"
# root:smtprelay in the package itself, so that `rpm -V` agrees with what post-install sets.
check "rpm: configuration 0640 root:smtprelay" grep -qx -- '-rw-r----- root:smtprelay /etc/smtprelay/smtprelay.toml' <<<"$rpm_modes"
check "rpm: configuration is noreplace" \
    grep -qx '/etc/smtprelay/smtprelay.toml' <<<"$(rpm -qp --configfiles "$rpm")"
check "rpm: pre-install creates the user" grep -q 'useradd --system' <<<"$rpm_scripts"
check "rpm: post-install makes the token key" grep -q 'token keygen' <<<"$rpm_scripts"
check "rpm: post-install enables the unit" grep -q 'systemctl enable smtprelay.service' <<<"$rpm_scripts"
check "rpm: upgrade restarts the unit" grep -q 'try-restart smtprelay.service' <<<"$rpm_scripts"
check "rpm: removal disables the unit" grep -q 'disable --now smtprelay.service' <<<"$rpm_scripts"
rpm_postun=$(sed -n '/^postuninstall scriptlet/,$p' <<<"$rpm_scripts")
check "rpm: systemd forgets the removed unit" grep -q 'systemctl daemon-reload' <<<"$rpm_postun"

check "rpm: binary is stripped of debug info" bash -c \
    "rpm2cpio '$rpm' | (cd \"\$(mktemp -d)\" && cpio -idm --quiet ./usr/bin/smtprelay && ! readelf -S usr/bin/smtprelay | grep -q debug_info)"

echo "== $deb in a fresh Debian root"
if [ $# -gt 0 ]; then
    root=$(realpath "$1")
else
    root=$(mktemp -d /tmp/smtprelay-root.XXXXXX)
    packaging/prepare-root.sh "$root"
fi
cleanup() { umount "$root/proc" 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT
mount -t proc proc "$root/proc"
in_root() { chroot "$root" "$@"; }

# As an admin installs it: apt resolves the dependencies (ca-certificates, libssl3).
cp "$deb" "$root/root/smtprelay.deb"
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq /root/smtprelay.deb

passwd_entry=$(in_root getent passwd smtprelay || true)
check "system user smtprelay exists" test -n "$passwd_entry"
check "user's uid is a system uid" test "$(cut -d: -f3 <<<"$passwd_entry")" -lt 1000
check "user's home is the state directory" equals "$(cut -d: -f6 <<<"$passwd_entry")" /var/lib/smtprelay
check "user cannot log in" equals "$(cut -d: -f7 <<<"$passwd_entry")" /usr/sbin/nologin
check "group smtprelay exists" in_root getent group smtprelay
mode() { in_root stat -c '%a %U:%G' "$1"; }
check "configuration is 0640 root:smtprelay" equals "$(mode /etc/smtprelay/smtprelay.toml)" "640 root:smtprelay"
check "token key is 0640 root:smtprelay" equals "$(mode /etc/smtprelay/token.key)" "640 root:smtprelay"
check "token key is 32 bytes, hex" equals "$(tr -d '\n' <"$root/etc/smtprelay/token.key" | wc -c)" 64
check "state directory is 0750 smtprelay:smtprelay" equals "$(mode /var/lib/smtprelay)" "750 smtprelay:smtprelay"
check "binary is 0755 root:root" equals "$(mode /usr/bin/smtprelay)" "755 root:root"
check "configuration is a conffile" grep -q '/etc/smtprelay/smtprelay.toml' \
    <<<"$(in_root dpkg-query -W -f='${Conffiles}' smtprelay)"
check "unit is installed" test -f "$root/usr/lib/systemd/system/smtprelay.service"
for command in $(sed -n 's/^Exec[A-Za-z]*=[-@+!]*\([^ ]*\).*/\1/p' "$root/usr/lib/systemd/system/smtprelay.service"); do
    check "unit's $command is installed" test -x "$root$command"
done
check "unit is enabled" test -L "$root/etc/systemd/system/multi-user.target.wants/smtprelay.service"
check "man page is installed" test -f "$root/usr/share/man/man1/smtprelay.1.gz"
check "binary runs" in_root smtprelay --version
check "dependencies installed" in_root dpkg-query -W ca-certificates
check "the binary finds every library it links" bash -c "! chroot '$root' ldd /usr/bin/smtprelay | grep -q 'not found'"

echo "== the installed relay, as the service user (tests/installed_package.rs)"
installed_tests installed_package "installed relay: check-config and one message relayed"

echo "== the unit under systemd (tests/installed_service.rs)"
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends systemd >/dev/null
umount "$root/proc" # the container mounts its own
# A machine that cannot run containers at all is said so loudly; one that can but whose
# boot or unit fails is a failure.
if ! SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q --register=no --keep-unit -D "$root" /bin/true >/dev/null 2>&1; then
    echo "SKIP the unit under systemd: systemd-nspawn cannot run a container on this machine"
else
    installed_tests installed_service "the unit: start, relay, /health, sandbox, reload, upgrade restart, stop"
fi
mount -t proc proc "$root/proc"

echo "== upgrade, remove, purge"
key_before=$(sha256sum <"$root/etc/smtprelay/token.key")
# An admin's edit to the conffile, and a message waiting in the queue.
echo '# edited by the admin' >>"$root/etc/smtprelay/smtprelay.toml"
in_root install -d -o smtprelay -g smtprelay -m 0700 /var/lib/smtprelay/queue
in_root install -o smtprelay -g smtprelay -m 0600 /dev/null /var/lib/smtprelay/queue/01KQUEUEDWHILEUPGRADING00
state_before=$(cd "$root/var/lib/smtprelay" && find . -type f | sort | xargs sha256sum)
in_root dpkg -i /root/smtprelay.deb >/dev/null
check "upgrade keeps the token key" equals "$(sha256sum <"$root/etc/smtprelay/token.key")" "$key_before"
check "upgrade keeps state and queue" \
    equals "$(cd "$root/var/lib/smtprelay" && find . -type f | sort | xargs sha256sum)" "$state_before"
check "upgrade keeps the admin's edit" grep -q 'edited by the admin' "$root/etc/smtprelay/smtprelay.toml"
check "upgrade keeps modes" equals "$(mode /etc/smtprelay/smtprelay.toml)" "640 root:smtprelay"

in_root dpkg -r smtprelay >/dev/null
check "remove deletes the binary" test ! -e "$root/usr/bin/smtprelay"
check "remove keeps the configuration" test -f "$root/etc/smtprelay/smtprelay.toml"
check "remove keeps the token key" test -f "$root/etc/smtprelay/token.key"
check "remove keeps the queue" test -f "$root/var/lib/smtprelay/queue/01KQUEUEDWHILEUPGRADING00"

in_root dpkg -P smtprelay >/dev/null
check "purge deletes /etc/smtprelay" test ! -e "$root/etc/smtprelay"
check "purge deletes /var/lib/smtprelay" test ! -e "$root/var/lib/smtprelay"
check "purge deletes the user" bash -c "! chroot '$root' getent passwd smtprelay"
check "purge disables the unit" test ! -e "$root/etc/systemd/system/multi-user.target.wants/smtprelay.service"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all package checks passed"
