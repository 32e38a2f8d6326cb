"""Host-side rules and clean-up decisions that need no root."""

from pathlib import Path

from deploy.cluster import host, settings


def test_guard_drops_pod_traffic_not_bound_for_the_bridge():
    rules = host.guard_rules()
    drop = next(rule for rule in rules if "DROP" in rule)
    assert drop[drop.index("-s") + 1] == settings.POD_CIDR
    assert drop[drop.index("!") + 1 :][:2] == ["-o", settings.BRIDGE]
    assert ["iptables", "-I", "FORWARD", "1", "-j", host.GUARD_CHAIN] in rules


def test_only_kubernetes_and_our_chains_are_cleaned():
    assert "KUBE-SERVICES".startswith(host.CHAIN_PREFIXES)
    assert host.GUARD_CHAIN.startswith(host.CHAIN_PREFIXES)
    assert not "CNI-FORWARD".startswith(host.CHAIN_PREFIXES)  # podman's CNI chains stay
    assert not "NETAVARK-FORWARD".startswith(host.CHAIN_PREFIXES)


def test_cni_cache_loses_only_the_cluster_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "CNI_CACHE", tmp_path / "cni")
    results = tmp_path / "cni" / "results"
    results.mkdir(parents=True)
    names = [
        f"{settings.CNI_NETWORK}-abc123-eth0",
        "cni-loopback-abc123-lo",
        "cni-loopback-other-lo",
        "podman-def456-eth0",
    ]
    for name in names:
        (results / name).write_text("{}")
    host.remove_cni_cache({"cni_cache": False})
    left = sorted(path.name for path in results.iterdir())
    assert left == ["cni-loopback-other-lo", "podman-def456-eth0"]


def test_cni_cache_folders_made_by_the_cluster_go_when_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "CNI_CACHE", tmp_path / "cni")
    (tmp_path / "cni" / "results").mkdir(parents=True)
    (tmp_path / "cni" / "results" / f"{settings.CNI_NETWORK}-abc-eth0").write_text("{}")
    host.remove_cni_cache({"cni_cache": False})
    assert not (tmp_path / "cni").exists()


def test_mounts_under_reads_mountinfo():
    assert "/proc" in host.mounts_under(Path("/proc"))
    assert host.mounts_under(Path("/nonexistent/chanfleet")) == []
