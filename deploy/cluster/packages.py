"""The Debian packages the cluster runs, installed with apt when missing."""

import os
import subprocess

# etcd, the container runtime and its OCI runtime, the CNI plugins, and what kube-proxy calls.
APT_PACKAGES = (
    "etcd-server",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "conntrack",
    "iptables",
    "iproute2",
    "openssl",
)


def missing(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    """Return the packages dpkg does not know as installed."""
    absent = []
    for package in packages:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        if "install ok installed" not in status.stdout:
            absent.append(package)
    return absent


def ensure(log=print) -> list[str]:
    """Install the missing packages with apt-get (as root); return what was installed."""
    absent = missing()
    if not absent:
        return []
    if os.geteuid() != 0:
        raise SystemExit(f"please run: sudo apt-get install -y {' '.join(absent)}")
    log(f"installing {' '.join(absent)} ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", *absent]
    if subprocess.run(argv, env=env, capture_output=True).returncode != 0:
        # A fresh machine's package lists may be missing or stale.
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(argv, env=env, check=True, capture_output=True)
    return absent
