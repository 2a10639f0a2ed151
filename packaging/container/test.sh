#!/usr/bin/env bash
# The container image and the manifests (issue 24), run by .ci/run as root:
#   - builds the image (build.sh) and prints its size (at most 40 MB unpacked);
#   - unpacks it into a runc bundle (bundle.py) and runs tests/container.rs against it: the
#     image's user, entrypoint and contents, a message relayed to the Exchange double from
#     inside, `smtprelay health`, SIGTERM to PID 1 with the queue intact;
#   - checks compose.yaml (docker-compose config, with and without the cluster profile) and
#     packaging/kubernetes/ (kubernetes-validate, offline; the ConfigMap's TOML with
#     check-config).
# Installs runc, docker-compose (Debian) and kubernetes-validate (PyPI, in a venv) if missing
# (packaging/container/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

packaging/container/tools.sh
venv=target/container/venv

failures=0
check() { # check DESCRIPTION COMMAND...
    if "${@:2}" >/dev/null; then
        echo "ok   $1"
    else
        echo "FAIL $1"
        failures=$((failures + 1))
    fi
}

echo "== the image"
packaging/container/build.sh
unpacked_kib=$(du -sk target/container/rootfs | cut -f1)
check "the image is at most 40 MB unpacked ($((unpacked_kib / 1024)) MB)" test "$unpacked_kib" -le $((40 * 1024))
bundle=target/container/bundle
python3 packaging/container/bundle.py target/container/smtprelay.oci.tar "$bundle"
if SMTPRELAY_CONTAINER_BUNDLE="$PWD/$bundle" cargo test --locked --test container -- --ignored --nocapture 2>&1; then
    echo "ok   the image under runc: contents, a message relayed, health, SIGTERM"
else
    echo "FAIL the image under runc"
    failures=$((failures + 1))
fi

echo "== compose.yaml"
compose=packaging/container/compose.yaml
check "compose.yaml is valid" docker-compose -f "$compose" config -q
check "compose.yaml with the cluster profile is valid" docker-compose -f "$compose" --profile cluster config -q
check "the cluster profile adds Redis and a second node" \
    bash -c "docker-compose -f '$compose' --profile cluster config --services | sort | tr '\n' ' ' | grep -qx 'redis relay relay-2 '"

echo "== packaging/kubernetes"
for manifest in packaging/kubernetes/*.yaml; do
    [ "$(basename "$manifest")" = kustomization.yaml ] && continue
    check "$(basename "$manifest") is valid Kubernetes" "$venv/bin/kubernetes-validate" --strict "$manifest"
done
# The ConfigMap's configuration, as the relay reads it, with the Secret's files in place.
secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
target/release/smtprelay token keygen --to "$secrets/token.key" >/dev/null
echo admin-token >"$secrets/admin.token"
echo client-secret >"$secrets/contoso.secret"
"$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["smtprelay.toml"])' \
    packaging/kubernetes/configmap.yaml | sed "s|/etc/smtprelay/secrets|$secrets|; s|/var/lib/smtprelay|$secrets/state|" \
    >"$secrets/smtprelay.toml"
check "the ConfigMap's smtprelay.toml passes check-config" target/release/smtprelay check-config --config "$secrets/smtprelay.toml"

if [ "$failures" -gt 0 ]; then
    echo "$failures container check(s) failed"
    exit 1
fi
echo "all container checks passed"
