"""A real single-node Kubernetes cluster on this machine, built from source and run as processes.

`python -m deploy.cluster up|down|status|load-image ARCHIVE`; the names below are for code
(deployment drills) that works with the cluster.
"""

from pathlib import Path

from . import configs, images, paths, settings
from .client import ctr, env, helm, kubectl, node_ready, wait_for
from .lifecycle import down, is_up, leftovers, status, up

KUBECONFIG = paths.KUBECONFIG
KUBECTL = paths.KUBECTL
HELM = paths.HELM
LOG_DIR = paths.LOG_DIR
PROBE_IMAGE = settings.PROBE_IMAGE

__all__ = [
    "HELM",
    "KUBECONFIG",
    "KUBECTL",
    "LOG_DIR",
    "PROBE_IMAGE",
    "ctr",
    "down",
    "env",
    "helm",
    "hostpath_volume",
    "is_up",
    "kubectl",
    "leftovers",
    "load_image",
    "node_ready",
    "nodeport_url",
    "status",
    "up",
    "wait_for",
]


def load_image(archive: str | Path, base_name: str | None = None) -> str:
    """Import a docker-archive or OCI tar into the cluster's containerd (k8s.io namespace)."""
    return images.load(Path(archive), base_name)


def nodeport_url(port: int, path: str = "/") -> str:
    """Return the host URL of a NodePort Service's port (NodePorts answer on 127.0.0.1 only)."""
    return f"http://127.0.0.1:{port}{path}"


def hostpath_volume(name: str, size: str = "1Gi", storage_class: str = "local") -> Path:
    """Create a PersistentVolume backed by var/cluster/volumes/NAME and return that folder."""
    folder = paths.VOLUME_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    kubectl("apply", "-f", "-", input=configs.hostpath_volume(name, folder, size, storage_class))
    return folder
