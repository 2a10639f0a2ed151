#!/usr/bin/env python3
"""Unpacks an OCI image archive into a runc bundle that runs the image as a runtime would:
its own entrypoint, command, user, environment and working directory, a read-only root file
system, no capabilities, no new privileges. packaging/container/test.sh uses it for
tests/container.rs.

    bundle.py IMAGE.oci.tar BUNDLE_DIR

The runtime spec starts from `runc spec` (the runtime's defaults) less what these machines
refuse (rlimits, cgroup resources) and less the network namespace, so the container reaches
the tests' doubles on the host's loopback. The host's /etc/hosts is bind-mounted, as
runtimes do.
"""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile


def blob(archive, digest):
    return archive.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()


def main():
    image, bundle = sys.argv[1:3]
    shutil.rmtree(bundle, ignore_errors=True)
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    with tarfile.open(image) as archive:
        index = json.loads(archive.extractfile("index.json").read())
        manifest = json.loads(blob(archive, index["manifests"][0]["digest"]))
        config = json.loads(blob(archive, manifest["config"]["digest"]))
        for layer in manifest["layers"]:

            with tarfile.open(fileobj=io.BytesIO(blob(archive, layer["digest"])), mode="r:gz") as tar:
                tar.extractall(rootfs, numeric_owner=True)
    image_config = config["config"]

    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    process = spec["process"]
    process.pop("rlimits", None)
    process["terminal"] = False
    process["args"] = image_config.get("Entrypoint", []) + image_config.get("Cmd", [])
    process["env"] = image_config.get("Env", [])
    process["cwd"] = image_config.get("WorkingDir") or "/"
    uid, _, gid = image_config.get("User", "0:0").partition(":")
    process["user"] = {"uid": int(uid), "gid": int(gid or uid)}
    process["capabilities"] = {key: [] for key in ("bounding", "effective", "permitted", "ambient")}
    process["noNewPrivileges"] = True
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["hostname"] = "smtprelay"
    linux = spec["linux"]
    linux.pop("resources", None)
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    spec["mounts"].append(
        {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]}
    )
    # What the image says about itself, for the test to check.
    spec.setdefault("annotations", {})["smtprelay.image-config"] = json.dumps(image_config)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f, indent=2)
    print(f"{bundle}: {' '.join(process['args'])} as {uid}:{gid or uid}")


main()
