"""The pinned versions of everything the local cluster builds, and how go.mod files pin them."""

import re

KUBERNETES = "1.28.8"
HELM = "3.13.3"
COREDNS = "1.11.1"

# k8s.io/kubernetes replaces each of these with ./staging/src/k8s.io/NAME; outside its own tree
# they must be replaced with the tag published for the same release (v0.MINOR.PATCH).
STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "legacy-cloud-providers",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
)

KUBE_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)


def staging_version(kubernetes: str = KUBERNETES) -> str:
    """Return the staging modules' tag for a Kubernetes release (1.28.8 gives v0.28.8)."""
    major, minor, patch = kubernetes.split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes}")
    return f"v0.{minor}.{patch}"


def replacements(gomod: str) -> dict[str, str]:
    """Map each module a go.mod replaces to the version it is replaced with."""
    pairs = re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\S+\s+(v\S+)\s*$", gomod, re.MULTILINE)
    return dict(pairs)


def requirement(gomod: str, module: str) -> str | None:
    """Return the version a go.mod requires of a module, or None."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod, re.MULTILINE)
    return match.group(1) if match else None


def kube_ldflags(kubernetes: str = KUBERNETES) -> str:
    """Return the linker flags that stamp the release into the binaries (kubectl version, nodes)."""
    major, minor, _ = kubernetes.split(".")
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion=v{kubernetes}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def helm_ldflags(helm: str = HELM) -> str:
    """Return the linker flags that stamp helm's own version (helm version)."""
    return f"-s -w -X helm.sh/helm/v3/internal/version.version=v{helm}"
