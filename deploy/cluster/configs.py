"""Rendering of every configuration file the cluster's processes read (pure functions)."""

import json
from pathlib import Path

from . import settings


def containerd_config(state: Path, sandbox_image: str = settings.PAUSE_IMAGE) -> str:
    """Return containerd's config.toml with all of its state under the given folder."""
    cni_conf = state / "cni" / "net.d"
    return f"""version = 2
root = "{state}/containerd/root"
state = "{state}/containerd/state"
# No oom_score_adj below containerd's own: this VM refuses -998, and runc then fails.
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{state}/containerd/containerd.sock"

[ttrpc]
  address = "{state}/containerd/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pod network namespaces live in var/cluster too, not in /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{state}/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def cni_config(state: Path) -> str:
    """Return the CNI network list: one bridge on the node's pod range (NodePorts, no hostPort)."""
    network = {
        "cniVersion": "0.4.0",
        "name": settings.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": settings.BRIDGE,
                "isGateway": True,
                # No default route and no masquerade: pods reach each other, Services and the
                # node, never an address outside this machine.
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(state / "cni" / "ipam"),
                    "ranges": [[{"subnet": settings.NODE_POD_CIDR, "gateway": settings.node_ip()}]],
                    "routes": [{"dst": settings.POD_CIDR}, {"dst": settings.SERVICE_CIDR}],
                },
            },
        ],
    }
    return json.dumps(network, indent=2) + "\n"


def kubeconfig(name: str, pki: Path, server: str | None = None) -> str:
    """Return a kubeconfig that authenticates with the certificate pki/NAME.crt."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "chanfleet",
                "cluster": {
                    "server": server or settings.apiserver_url(),
                    "certificate-authority": str(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate": str(pki / f"{name}.crt"),
                    "client-key": str(pki / f"{name}.key"),
                },
            }
        ],
        "contexts": [{"name": "chanfleet", "context": {"cluster": "chanfleet", "user": name}}],
        "current-context": "chanfleet",
    }
    return json.dumps(config, indent=2) + "\n"


def kubelet_config(state: Path) -> str:
    """Return the KubeletConfiguration: cgroupfs, the cluster DNS, no host resolv.conf."""
    pki = state / "pki"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": settings.node_ip(),
        "port": settings.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": settings.KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        # The VM's cgroups are hybrid v1/v2 and no systemd manages them.
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{state}/containerd/containerd.sock",
        "clusterDNS": [settings.dns_ip()],
        "clusterDomain": settings.CLUSTER_DOMAIN,
        # Pods get the cluster's resolver only: no host search domains, no upstream servers.
        "resolvConf": "",
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "serializeImagePulls": False,
        "registerNode": True,
        "podCIDR": settings.NODE_POD_CIDR,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }
    return json.dumps(config, indent=2) + "\n"


def kube_proxy_config(state: Path) -> str:
    """Return the KubeProxyConfiguration: iptables, NodePorts on the host's loopback only."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(state / "conf" / "kube-proxy.kubeconfig")},
        "hostnameOverride": settings.NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": settings.POD_CIDR,
        "nodePortAddresses": list(settings.NODEPORT_ADDRESSES),
        # localhostNodePorts sets route_localnet, which 127.0.0.1:<nodePort> needs.
        "iptables": {"localhostNodePorts": True, "masqueradeAll": False, "syncPeriod": "10s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "oomScoreAdj": 0,
        # Leave the kernel's conntrack table size alone: the VM may not allow changing it.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }
    return json.dumps(config, indent=2) + "\n"


def corefile(state: Path) -> str:
    """Return CoreDNS's Corefile: the cluster's zones from the API, NXDOMAIN for anything else."""
    bind = settings.node_ip()
    return f"""{settings.CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {bind}
    ready 127.0.0.1:{settings.COREDNS_READY_PORT}
    errors
    kubernetes {settings.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {state}/conf/coredns.kubeconfig chanfleet
        pods insecure
        ttl 5
    }}
    cache 5
}}
# Nothing is forwarded upstream: names outside the cluster do not exist for pods.
.:53 {{
    bind {bind}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def addons() -> str:
    """Return the manifests applied once the API answers: DNS's RBAC and Service, a StorageClass."""
    documents = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "chanfleet:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "chanfleet:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "chanfleet:coredns",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "system:chanfleet-coredns",
                }
            ],
        },
        # CoreDNS runs on the node itself; this selector-less Service gives it the usual
        # kube-dns name and ClusterIP (the chart's nginx resolver uses that name).
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"},
            },
            "spec": {
                "clusterIP": settings.dns_ip(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"},
            },
            "subsets": [
                {
                    "addresses": [{"ip": settings.node_ip()}],
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    ],
                }
            ],
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            # The default class, so a chart's claims wait for a volume made with hostpath_volume.
            "metadata": {
                "name": "local",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}, indent=2) + "\n"


def hostpath_volume(name: str, path: Path, size: str, storage_class: str = "local") -> str:
    """Return a PersistentVolume manifest backed by a folder on the node."""
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"chanfleet.local/volume": name}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            # Kubernetes deletes hostPath volumes only under /tmp: a released one is kept.
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": storage_class,
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
        },
    }
    return json.dumps(volume, indent=2) + "\n"
