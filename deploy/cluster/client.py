"""Running kubectl, helm and ctr against the local cluster, and polling it."""

import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable

from . import paths, settings


def env() -> dict[str, str]:
    """Return an environment whose KUBECONFIG points at the cluster's admin kubeconfig."""
    helm_home = paths.STATE_DIR / "helm"
    return {
        **os.environ,
        "KUBECONFIG": str(paths.KUBECONFIG),
        # kubectl's and helm's discovery caches, kept out of ~/.kube like everything else.
        "KUBECACHEDIR": str(paths.STATE_DIR / "kube-cache"),
        # Helm's caches and repositories stay in the cluster's state, not in ~/.cache.
        "HELM_CACHE_HOME": str(helm_home / "cache"),
        "HELM_CONFIG_HOME": str(helm_home / "config"),
        "HELM_DATA_HOME": str(helm_home / "data"),
    }


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl, helm or ctr run, whose message carries the command's stderr."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()


def _run(argv: list[str], check: bool, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise CommandError(result.returncode, argv, result.stdout, result.stderr)
    return result


def kubectl(*args: str, timeout: float = 60, check: bool = True, input: str | None = None):
    """Run the built kubectl against the cluster and return the CompletedProcess (text)."""
    return _run([str(paths.KUBECTL), *args], check, env=env(), timeout=timeout, input=input)


def helm(*args: str, timeout: float = 300, check: bool = True):
    """Run the built helm against the cluster and return the CompletedProcess (text)."""
    return _run([str(paths.HELM), *args], check, env=env(), timeout=timeout)


def ctr(*args: str, timeout: float = 120, check: bool = True):
    """Run ctr against the cluster's containerd in the k8s.io namespace (CompletedProcess)."""
    argv = [str(paths.CTR), "--address", str(paths.CONTAINERD_SOCKET), "-n", "k8s.io", *args]
    return _run(argv, check, timeout=timeout)


def apiserver_ready(timeout: float = 2.0) -> bool:
    """Tell whether the API server answers /readyz with ok."""
    ca = paths.PKI_DIR / "ca.crt"
    if not ca.exists():
        return False
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(
            f"{settings.apiserver_url()}/readyz", context=context, timeout=timeout
        ) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5):
    """Poll check until it returns true; raise TimeoutError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def node_ready() -> bool:
    """Tell whether the node reports the Ready condition as True."""
    jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
    result = kubectl("get", "node", settings.NODE_NAME, "-o", f"jsonpath={jsonpath}", check=False)
    return result.returncode == 0 and result.stdout.strip() == "True"
