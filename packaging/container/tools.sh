#!/usr/bin/env bash
# The tools packaging/container/test.sh uses, installed when missing: runc, docker-compose
# (Debian) and kubernetes-validate (PyPI, pinned, in the venv target/container/venv).
# .ci/run runs this while the tests compile: it waits on the network, not the CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v runc >/dev/null || missing+=(runc)
command -v docker-compose >/dev/null || missing+=(docker-compose)
python3 -c 'import venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
venv=target/container/venv
[ -x "$venv/bin/kubernetes-validate" ] || {
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0
}
