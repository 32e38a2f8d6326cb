"""The build's version pinning: go.mod files agree with versions.py."""

import pytest

from deploy.cluster import build, paths, versions


def gomod(module: str) -> str:
    return (paths.GO_DIR / module / "go.mod").read_text()


def test_staging_version_follows_the_release():
    assert versions.staging_version("1.28.8") == "v0.28.8"
    with pytest.raises(ValueError):
        versions.staging_version("2.0.0")


def test_kube_module_pins_every_staging_module_to_the_release():
    text = gomod("kube")
    assert versions.requirement(text, "k8s.io/kubernetes") == f"v{versions.KUBERNETES}"
    replaced = versions.replacements(text)
    tag = versions.staging_version()
    assert {f"k8s.io/{name}" for name in versions.STAGING_MODULES} <= replaced.keys()
    assert {replaced[f"k8s.io/{name}"] for name in versions.STAGING_MODULES} == {tag}
    assert (paths.GO_DIR / "kube" / "go.sum").read_text().count(f"k8s.io/api {tag}") >= 1


def test_helm_and_coredns_modules_pin_their_versions():
    assert versions.requirement(gomod("helm"), "helm.sh/helm/v3") == f"v{versions.HELM}"
    assert versions.requirement(gomod("coredns"), "github.com/coredns/coredns") == (
        f"v{versions.COREDNS}"
    )


def test_helm_uses_the_same_kubernetes_minor():
    minor = versions.KUBERNETES.split(".")[1]
    assert versions.requirement(gomod("helm"), "k8s.io/client-go").startswith(f"v0.{minor}.")


def test_ldflags_stamp_the_release():
    flags = versions.kube_ldflags("1.28.8")
    assert "-X k8s.io/component-base/version.gitVersion=v1.28.8" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=28" in flags
    assert versions.helm_ldflags("3.13.3").endswith("version.version=v3.13.3")


def test_a_changed_source_changes_the_build_stamp(tmp_path):
    (tmp_path / "go.mod").write_text("module x\n")
    before = build.sources_digest(tmp_path)
    (tmp_path / "main.go").write_text("package main\n")
    assert build.sources_digest(tmp_path) != before
    (tmp_path / "notes.txt").write_text("ignored\n")
    assert len({build.sources_digest(tmp_path), before}) == 2


def test_every_kube_command_is_built():
    kube = next(t for t in build.targets() if t.name == "kubernetes")
    assert kube.outputs == versions.KUBE_COMMANDS
    assert "providerless" in kube.tags
    assert {p.rsplit("/", 1)[1] for p in kube.packages} == set(versions.KUBE_COMMANDS)
