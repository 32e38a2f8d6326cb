"""The cluster's certificate authority and certificates, made with plain openssl."""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import settings

CA_DAYS = 3650
DAYS = 365


@dataclass(frozen=True)
class CertSpec:
    """One certificate: its file name, subject and subject alternative names."""

    name: str
    common_name: str
    organization: str = ""
    sans: tuple[str, ...] = field(default_factory=tuple)
    server: bool = False
    client: bool = True


def apiserver_sans() -> tuple[str, ...]:
    """Return every name and address the API server is reached by (host, pods, the Service)."""
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    dns.append(f"kubernetes.default.svc.{settings.CLUSTER_DOMAIN}")
    dns.append("localhost")
    ips = ["127.0.0.1", settings.service_ip(1), settings.node_ip()]
    return tuple([f"DNS:{name}" for name in dns] + [f"IP:{ip}" for ip in ips])


def specs() -> list[CertSpec]:
    """Return every certificate the cluster's components present."""
    node = settings.NODE_NAME
    return [
        CertSpec("apiserver", "kube-apiserver", sans=apiserver_sans(), server=True, client=False),
        # The API server calls kubelets for logs and exec; kubelets authorize it through RBAC.
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        CertSpec("admin", "chanfleet-admin", "system:masters"),
        CertSpec("controller-manager", "system:kube-controller-manager"),
        CertSpec("scheduler", "system:kube-scheduler"),
        CertSpec("kube-proxy", "system:kube-proxy"),
        # The Node authorizer knows a kubelet by this exact name and group.
        CertSpec("kubelet-client", f"system:node:{node}", "system:nodes"),
        CertSpec(
            "kubelet",
            node,
            sans=(f"DNS:{node}", f"IP:{settings.node_ip()}", "IP:127.0.0.1"),
            server=True,
            client=False,
        ),
        CertSpec("coredns", "system:chanfleet-coredns"),
    ]


def subject(spec: CertSpec) -> str:
    """Return the openssl -subj string of a certificate."""
    return f"/CN={spec.common_name}" + (f"/O={spec.organization}" if spec.organization else "")


def extensions(spec: CertSpec) -> str:
    """Return the openssl extension file text of a certificate."""
    wanted = (("serverAuth", spec.server), ("clientAuth", spec.client))
    usages = [usage for usage, used in wanted if used]
    lines = [
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature, keyEncipherment",
        f"extendedKeyUsage = {', '.join(usages)}",
    ]
    if spec.sans:
        lines.append(f"subjectAltName = {', '.join(spec.sans)}")
    return "\n".join(lines) + "\n"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _key(path: Path) -> None:
    # EC keys: generating RSA keys would be most of the certificates' cost.
    curve = "ec_paramgen_curve:P-256"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", curve, "-out", str(path))
    path.chmod(0o600)


def generate(pki: Path) -> None:
    """Write the CA, the service-account key pair and every certificate into pki (once)."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
    if not ca_crt.exists():
        _key(ca_key)
        _openssl(
            "req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=chanfleet-ca",
            "-days", str(CA_DAYS), "-out", str(ca_crt),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
    if not (pki / "sa.key").exists():
        _key(pki / "sa.key")
        _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for spec in specs():
        crt, key = pki / f"{spec.name}.crt", pki / f"{spec.name}.key"
        if crt.exists():
            continue
        _key(key)
        csr, ext = pki / f"{spec.name}.csr", pki / f"{spec.name}.ext"
        ext.write_text(extensions(spec))
        _openssl("req", "-new", "-key", str(key), "-subj", subject(spec), "-out", str(csr))
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", str(DAYS), "-extfile", str(ext), "-out", str(crt),
        )  # fmt: skip
        csr.unlink()
        ext.unlink()
