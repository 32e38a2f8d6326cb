"""Rendering of the components' configuration files."""

import ipaddress
import json
import tomllib
from pathlib import Path

from deploy.cluster import configs, settings

STATE = Path("/srv/chanfleet/var/cluster")


def test_containerd_keeps_state_local_and_oom_scores_restricted():
    config = tomllib.loads(configs.containerd_config(STATE))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == settings.PAUSE_IMAGE
    options = cri["containerd"]["runtimes"]["runc"]["options"]
    assert options["SystemdCgroup"] is False
    for path in (config["root"], config["state"], config["grpc"]["address"], options["Root"]):
        assert path.startswith(str(STATE))
    assert cri["cni"]["conf_dir"].startswith(str(STATE))


def test_cni_network_has_no_way_out():
    network = json.loads(configs.cni_config(STATE))
    bridge = network["plugins"][0]
    assert bridge["bridge"] == settings.BRIDGE
    assert bridge["isDefaultGateway"] is False and bridge["ipMasq"] is False
    routes = {route["dst"] for route in bridge["ipam"]["routes"]}
    assert routes == {settings.POD_CIDR, settings.SERVICE_CIDR}
    assert bridge["ipam"]["dataDir"].startswith(str(STATE))


def test_addresses_fit_their_ranges():
    pods = ipaddress.ip_network(settings.POD_CIDR)
    services = ipaddress.ip_network(settings.SERVICE_CIDR)
    assert ipaddress.ip_network(settings.NODE_POD_CIDR).subnet_of(pods)
    assert ipaddress.ip_address(settings.node_ip()) in pods
    assert ipaddress.ip_address(settings.dns_ip()) in services
    assert not pods.overlaps(services)


def test_kubelet_uses_cgroupfs_and_the_cluster_dns_only():
    config = json.loads(configs.kubelet_config(STATE))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["clusterDNS"] == [settings.dns_ip()]
    assert config["clusterDomain"] == "cluster.local"
    assert config["resolvConf"] == ""
    assert config["containerRuntimeEndpoint"] == f"unix://{STATE}/containerd/containerd.sock"
    assert config["authentication"]["anonymous"]["enabled"] is False


def test_kube_proxy_serves_nodeports_on_loopback():
    config = json.loads(configs.kube_proxy_config(STATE))
    assert config["nodePortAddresses"] == ["127.0.0.0/8"]
    assert config["iptables"]["localhostNodePorts"] is True
    assert config["clusterCIDR"] == settings.POD_CIDR


def test_corefile_answers_the_cluster_zone_and_forwards_nothing():
    corefile = configs.corefile(STATE)
    assert corefile.startswith("cluster.local:53 ")
    assert f"bind {settings.node_ip()}" in corefile
    assert "forward " not in corefile
    assert "rcode NXDOMAIN" in corefile


def test_addons_give_kube_dns_its_clusterip_and_endpoint():
    items = {item["kind"]: item for item in json.loads(configs.addons())["items"]}
    assert items["Service"]["spec"]["clusterIP"] == settings.dns_ip()
    assert "selector" not in items["Service"]["spec"]
    assert items["Endpoints"]["subsets"][0]["addresses"] == [{"ip": settings.node_ip()}]
    assert items["ClusterRoleBinding"]["subjects"][0]["name"] == "system:chanfleet-coredns"


def test_kubeconfig_points_at_its_certificate():
    config = json.loads(configs.kubeconfig("admin", STATE / "pki"))
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-key"] == f"{STATE}/pki/admin.key"


def test_hostpath_volume_is_retained_in_the_local_class():
    volume = json.loads(configs.hostpath_volume("data", STATE / "volumes" / "data", "2Gi"))
    assert volume["spec"]["storageClassName"] == "local"
    assert volume["spec"]["capacity"] == {"storage": "2Gi"}
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
