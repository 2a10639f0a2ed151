#!/usr/bin/env bash
# Builds the container image from the release binary into target/container/smtprelay.oci.tar:
# an OCI image archive that `podman load -i` and `docker load -i` (Docker 25+) read, named
# localhost/smtprelay:<version>. No registry, no base image, no container tools: the image is
# the binary, the shared libraries it links (as ldd finds them on this machine), the CA
# certificates, a passwd/group with the non-root user smtprelay (10001), the default
# configuration and the configuration reference. No shell, no package manager.
#
#   packaging/container/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

uid=10001
version=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
license=$(sed -n '/^\[package\]/,/^\[/s/^license = "\(.*\)"$/\1/p' Cargo.toml)
description=$(sed -n '/^\[package\]/,/^\[/s/^description = "\(.*\)"$/\1/p' Cargo.toml)

cargo build --release --locked
# Reproducible: every time in the image is the last commit's (or SOURCE_DATE_EPOCH). Set
# after the build: ring's and openssl-sys's build scripts watch the variable, and a value
# the packages' build did not have would build the release binary over again.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
out=target/container
rootfs=$out/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/bin,etc/smtprelay,etc/ssl/certs,usr/share/doc/smtprelay,var/lib/smtprelay}
# Symbols stay (names in backtraces), line tables go, as in the packages.
objcopy --strip-debug target/release/smtprelay "$rootfs/usr/bin/smtprelay"

# Every shared library the binary links, and the dynamic loader, where ldd finds them.
for lib in $(ldd target/release/smtprelay | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nsmtprelay:x:%s:%s:smtprelay:/var/lib/smtprelay:/usr/sbin/nologin\n' \
    "$uid" "$uid" >"$rootfs/etc/passwd"
printf 'root:x:0:\nsmtprelay:x:%s:\n' "$uid" >"$rootfs/etc/group"
# Runtimes mount their own /etc/hosts and /etc/resolv.conf over these; localhost resolves
# without them. glibc looks host names up in the files, then DNS (both built in since 2.34).
printf '127.0.0.1 localhost\n::1 localhost\n' >"$rootfs/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
install -m 0644 packaging/container/smtprelay.toml "$rootfs/etc/smtprelay/smtprelay.toml"
install -m 0644 config/reference.toml "$rootfs/usr/share/doc/smtprelay/config-reference.toml"
install -m 0644 README.md "$rootfs/usr/share/doc/smtprelay/README.md"
chmod 0755 "$rootfs/usr/bin/smtprelay"
chmod 0750 "$rootfs/var/lib/smtprelay"

second=1000000000 # Go-style durations in the image config are nanoseconds
cat >"$out/config.json" <<JSON
{
  "User": "$uid:$uid",
  "Entrypoint": ["/usr/bin/smtprelay"],
  "Cmd": ["serve", "--config", "/etc/smtprelay/smtprelay.toml"],
  "Env": ["PATH=/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
  "WorkingDir": "/var/lib/smtprelay",
  "ExposedPorts": {"2525/tcp": {}, "2587/tcp": {}},
  "Volumes": {"/var/lib/smtprelay": {}},
  "StopSignal": "SIGTERM",
  "Healthcheck": {
    "Test": ["CMD", "/usr/bin/smtprelay", "health"],
    "Interval": $((30 * second)),
    "Timeout": $((10 * second)),
    "StartPeriod": $((10 * second)),
    "Retries": 3
  },
  "Labels": {
    "org.opencontainers.image.title": "smtprelay",
    "org.opencontainers.image.description": "$description",
    "org.opencontainers.image.version": "$version",
    "org.opencontainers.image.licenses": "$license",
    "org.opencontainers.image.documentation": "/usr/share/doc/smtprelay/README.md"
  }
}
JSON
python3 packaging/container/oci.py "$rootfs" "$out/smtprelay.oci.tar" --config "$out/config.json" \
    --name localhost/smtprelay --tag "$version" --owner "var/lib/smtprelay=$uid:$uid"
echo "image size: $(du -k "$out/smtprelay.oci.tar" | cut -f1) KiB archive, $(du -sk "$rootfs" | cut -f1) KiB unpacked"
