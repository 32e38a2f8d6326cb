"""Certificate subjects and SANs, and a real openssl run."""

import shutil
import subprocess

import pytest

from deploy.cluster import certs, settings


def by_name(name):
    return next(spec for spec in certs.specs() if spec.name == name)


def test_apiserver_is_valid_for_every_way_it_is_reached():
    sans = certs.apiserver_sans()
    assert "DNS:kubernetes.default.svc.cluster.local" in sans
    assert "IP:127.0.0.1" in sans
    assert "IP:10.96.0.1" in sans  # the kubernetes Service, for pods
    assert f"IP:{settings.node_ip()}" in sans  # the advertised address


def test_identities_match_kubernetes_bootstrap_rbac():
    kubelet = by_name("kubelet-client")
    assert (kubelet.common_name, kubelet.organization) == ("system:node:chanfleet", "system:nodes")
    assert by_name("kube-proxy").common_name == "system:kube-proxy"
    assert by_name("controller-manager").common_name == "system:kube-controller-manager"
    assert by_name("scheduler").common_name == "system:kube-scheduler"
    assert by_name("admin").organization == "system:masters"
    assert certs.subject(by_name("admin")) == "/CN=chanfleet-admin/O=system:masters"


def test_extensions_name_usages_and_sans():
    text = certs.extensions(by_name("apiserver"))
    assert "extendedKeyUsage = serverAuth\n" in text
    assert "subjectAltName = DNS:kubernetes," in text
    assert "subjectAltName" not in certs.extensions(by_name("admin"))
    assert "extendedKeyUsage = clientAuth\n" in certs.extensions(by_name("admin"))


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_generate_signs_every_certificate_with_the_ca(tmp_path):
    certs.generate(tmp_path)
    for spec in certs.specs():
        subprocess.run(
            ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / f"{spec.name}.crt"],
            check=True, capture_output=True,
        )  # fmt: skip
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", tmp_path / "apiserver.crt"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "IP Address:10.96.0.1" in text
    assert (tmp_path / "sa.pub").exists()
    assert oct((tmp_path / "admin.key").stat().st_mode & 0o777) == "0o600"
