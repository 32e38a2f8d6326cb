"""The host-side pieces of the cluster: the bridge, sysctls, firewall rules, mounts, cgroups."""

import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from . import settings

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # Pod-to-Service replies between pods on the one bridge must pass through iptables.
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.ipv4.conf.all.route_localnet": None,  # kube-proxy sets it; restored at down
}
NETNS_DIR = Path("/run/netns")
# Paths outside var/cluster that kubelet and containerd write to whatever their config says.
HOST_PATHS = (Path("/var/log/pods"), Path("/var/log/containers"), Path("/run/containerd"))
# libcni caches each attachment here; other CNI users (podman) may share the folder.
CNI_CACHE = Path("/var/lib/cni")
# Only Kubernetes' and our own chains: CNI- chains may belong to another CNI user (podman).
CHAIN_PREFIXES = ("KUBE-", "CHANFLEET-")
GUARD_CHAIN = "CHANFLEET-GUARD"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command quietly and return its result; a failure's error carries its stderr."""
    if argv[0] in ("iptables", "ip6tables"):
        # Wait for the xtables lock rather than fail while kubelet or kube-proxy hold it.
        argv = (argv[0], "-w", "5", *argv[1:])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        command = " ".join(argv)
        raise RuntimeError(f"{command} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def baseline() -> dict:
    """Snapshot what up may change on the host, so down can put it back."""
    return {
        "sysctls": {
            name: _sysctl_path(name).read_text().strip()
            for name in SYSCTLS
            if _sysctl_path(name).exists()
        },
        "nft_tables": nft_tables(),
        "netns": sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.exists() else [],
        "cni_cache": CNI_CACHE.exists(),
        "paths": {
            str(path): sorted(p.name for p in path.iterdir()) if path.exists() else None
            for path in HOST_PATHS
        },
    }


def nft_tables() -> list[str]:
    """Return the nftables tables as "family name" (iptables-nft makes them on first use)."""
    if not shutil.which("nft"):
        return []
    listed = run("nft", "list", "tables", check=False).stdout
    return [line.removeprefix("table ").strip() for line in listed.splitlines() if line.strip()]


def remove_new_nft_tables(saved: dict) -> None:
    """Delete the tables made since the baseline that hold no rule and no chain of their own."""
    if "nft_tables" not in saved or not shutil.which("nft"):
        return
    for table in set(nft_tables()) - set(saved["nft_tables"]):
        family, name = table.split()
        listed = run("nft", "-j", "list", "table", family, name, check=False)
        if listed.returncode != 0:
            continue
        items = json.loads(listed.stdout).get("nftables", [])
        rules = [item for item in items if "rule" in item or "set" in item or "map" in item]
        own_chains = [item for item in items if "chain" in item and "hook" not in item["chain"]]
        if not rules and not own_chains:
            run("nft", "delete", "table", family, name, check=False)


def set_sysctls() -> None:
    """Turn on forwarding and bridge netfilter for the pod network."""
    for name, value in SYSCTLS.items():
        if value is not None and _sysctl_path(name).exists():
            _sysctl_path(name).write_text(value)


def restore_sysctls(saved: dict) -> None:
    """Put back the sysctl values of the baseline."""
    for name, value in saved.get("sysctls", {}).items():
        try:
            _sysctl_path(name).write_text(value)
        except OSError:
            pass


def create_bridge() -> None:
    """Create the pods' bridge with the node's address (the API server advertises it)."""
    if run("ip", "link", "show", settings.BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", settings.BRIDGE, "type", "bridge")
    prefix = settings.NODE_POD_CIDR.split("/")[1]
    addresses = run("ip", "-o", "addr", "show", "dev", settings.BRIDGE).stdout
    if f" {settings.node_ip()}/" not in addresses:
        run("ip", "addr", "add", f"{settings.node_ip()}/{prefix}", "dev", settings.BRIDGE)
    run("ip", "link", "set", settings.BRIDGE, "up")


def remove_bridge() -> None:
    """Delete the bridge and any veth still attached to it."""
    links = run("ip", "-o", "link", "show", "master", settings.BRIDGE, check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        run("ip", "link", "del", name, check=False)
    run("ip", "link", "del", settings.BRIDGE, check=False)


def guard_rules() -> list[list[str]]:
    """Return the iptables commands that keep pod traffic from leaving the machine."""
    return [
        ["iptables", "-N", GUARD_CHAIN],
        ["iptables", "-A", GUARD_CHAIN, "-s", settings.POD_CIDR, "!", "-o", settings.BRIDGE,
         "-j", "DROP"],  # fmt: skip
        ["iptables", "-I", "FORWARD", "1", "-j", GUARD_CHAIN],
    ]


def install_guard() -> None:
    """Drop forwarded pod traffic bound for anything but the bridge (belt to the routes' braces)."""
    if run("iptables", "-S", GUARD_CHAIN, check=False).returncode == 0:
        return
    for argv in guard_rules():
        run(*argv)


def cleanup_iptables() -> None:
    """Delete every KUBE- and CHANFLEET- chain and the rules that jump to them."""
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(f"{tool}-save"):
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            saved = run(f"{tool}-save", "-t", table, check=False).stdout
            chains = [
                line[1:].split()[0]
                for line in saved.splitlines()
                if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)
            ]
            if not chains:
                continue
            for line in saved.splitlines():
                words = line.split()
                if line.startswith("-A ") and not words[1].startswith(CHAIN_PREFIXES):
                    # A rule of another chain that jumps to one of ours.
                    if any(word in chains for word in words):
                        run(tool, "-t", table, "-D", *shlex.split(line)[1:], check=False)
            for chain in chains:
                run(tool, "-t", table, "-F", chain, check=False)
            for chain in chains:
                run(tool, "-t", table, "-X", chain, check=False)


def mounts_under(prefix: Path) -> list[str]:
    """Return the mount points at or under prefix, deepest first."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(prefix) or point.startswith(f"{prefix}/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(prefix: Path) -> None:
    """Unmount everything mounted at or under prefix (lazily when busy)."""
    for _ in range(3):
        points = mounts_under(prefix)
        if not points:
            return
        for point in points:
            if run("umount", point, check=False).returncode != 0:
                run("umount", "-l", point, check=False)


def remove_new_netns(saved: dict) -> None:
    """Unmount and delete the pod network namespaces created since the baseline."""
    if not NETNS_DIR.exists():
        return
    for entry in NETNS_DIR.iterdir():
        if entry.name.startswith("cni-") and entry.name not in saved.get("netns", []):
            unmount_under(entry)
            entry.unlink(missing_ok=True)


def remove_new_paths(saved: dict) -> None:
    """Delete what the runtime and kubelet left in host folders since the baseline."""
    for path in HOST_PATHS:
        before = saved.get("paths", {}).get(str(path))
        if not path.exists():
            continue
        if before is None:
            unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)
            continue
        for entry in path.iterdir():
            if entry.name not in before:
                unmount_under(entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def remove_cni_cache(saved: dict) -> None:
    """Delete libcni's cache entries of the cluster's pods, and the folders if they were new."""
    results = CNI_CACHE / "results"
    if results.is_dir():
        # Entries are NETWORK-CONTAINERID-IFNAME; containerd adds a cni-loopback one per pod.
        prefix = f"{settings.CNI_NETWORK}-"
        ours = [entry for entry in results.iterdir() if entry.name.startswith(prefix)]
        sandboxes = {entry.name.removeprefix(prefix).rsplit("-", 1)[0] for entry in ours}
        for sandbox in sandboxes:
            (results / f"cni-loopback-{sandbox}-lo").unlink(missing_ok=True)
        for entry in ours:
            entry.unlink(missing_ok=True)
    if not saved.get("cni_cache", True):
        for folder in (results, CNI_CACHE):
            try:
                folder.rmdir()  # only when empty: another CNI user may have come meanwhile
            except OSError:
                pass


def pod_cgroups() -> list[Path]:
    """Return kubelet's kubepods cgroups in every hierarchy, deepest first."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.exists() else []:
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def kill_pod_cgroups() -> None:
    """Kill every process left in the pods' cgroups and remove the cgroups."""
    for cgroup in pod_cgroups():
        try:
            pids = (cgroup / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for cgroup in pod_cgroups():
        try:
            cgroup.rmdir()
        except OSError:
            pass
