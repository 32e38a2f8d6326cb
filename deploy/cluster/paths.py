"""Where the local cluster keeps its binaries, its Go sources and its state."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parents[1]
GO_DIR = PACKAGE / "go"
BIN_DIR = REPO / "build" / "cluster" / "bin"
IMAGE_DIR = REPO / "build" / "cluster" / "images"
STATE_DIR = REPO / "var" / "cluster"
PKI_DIR = STATE_DIR / "pki"
LOG_DIR = STATE_DIR / "logs"
PID_DIR = STATE_DIR / "pids"
CONF_DIR = STATE_DIR / "conf"
KUBECONFIG = STATE_DIR / "admin.kubeconfig"
CONTAINERD_DIR = STATE_DIR / "containerd"
CONTAINERD_SOCKET = CONTAINERD_DIR / "containerd.sock"
KUBELET_DIR = STATE_DIR / "kubelet"
VOLUME_DIR = STATE_DIR / "volumes"
BASELINE = STATE_DIR / "baseline.json"
# Outside var/cluster, which down removes: up and down of two processes take turns on it.
LOCK = REPO / "build" / "cluster" / "lock"

KUBECTL = BIN_DIR / "kubectl"
HELM = BIN_DIR / "helm"
CTR = Path("/usr/bin/ctr")
