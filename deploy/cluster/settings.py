"""The local cluster's fixed network layout, names and ports."""

import ipaddress

NODE_NAME = "chanfleet"
# Pods of the one node live in NODE_POD_CIDR, behind the bridge whose address is the node's.
POD_CIDR = "10.244.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
BRIDGE = "cfbr0"
CNI_NETWORK = "chanfleet"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
NODEPORT_RANGE = "30000-32767"
# NodePorts answer on the host's loopback only, so tests never send traffic elsewhere.
NODEPORT_ADDRESSES = ("127.0.0.0/8",)

APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
COREDNS_READY_PORT = 18181

PAUSE_IMAGE = "chanfleet.local/pause:1"
PROBE_IMAGE = "chanfleet.local/probe:1"


def node_ip() -> str:
    """Return the node's address: the first address of its pod range, held by the bridge."""
    return str(next(ipaddress.ip_network(NODE_POD_CIDR).hosts()))


def service_ip(index: int) -> str:
    """Return the service range's address number index (1 is the kubernetes Service)."""
    return str(ipaddress.ip_network(SERVICE_CIDR).network_address + index)


def dns_ip() -> str:
    """Return the ClusterIP of the kube-dns Service that pods use as their resolver."""
    return service_ip(10)


def apiserver_url() -> str:
    """Return the API server's URL as the host's clients reach it."""
    return f"https://127.0.0.1:{APISERVER_PORT}"
