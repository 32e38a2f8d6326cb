"""The pure parts of the image builds: engine choice and flags, names, base and smoke commands."""

import io
import re
import tarfile

import pytest

from deploy.image import base, smoke, standins, versions
from deploy.image.engine import PODMAN_GLOBAL_ARGS, Engine, choose, podman_ulimits

PODMAN = Engine("podman", PODMAN_GLOBAL_ARGS, podman_ulimits(20000, 96367, 32768))
DOCKER = Engine("docker")


def test_docker_wins_only_when_its_engine_answers():
    """A docker CLI without an engine is not enough: podman is used then."""
    assert choose(True, "/usr/bin/podman") == "docker"
    assert choose(False, "/usr/bin/podman") == "podman"
    assert choose(False, None) is None


def test_podman_ulimits_stay_within_this_process_and_pid_max():
    """nofile follows our limit; nproc is capped at kernel.pid_max, which runc refuses above."""
    assert podman_ulimits(20000, 96367, 32768) == (
        "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
    assert podman_ulimits(1024, 500, 32768)[3] == "nproc=500:500"
    assert podman_ulimits(-1, -1, 4096) == (
        "--ulimit", "nofile=1048576:1048576", "--ulimit", "nproc=4096:4096")


def test_podman_commands_carry_runc_cgroupfs_and_limits(tmp_path):
    """Every podman command names runc and cgroupfs; builds and runs pass explicit limits."""
    build = PODMAN.build_command(tmp_path, tmp_path / "Dockerfile", ["localhost/x:1"],
                                 {"ca-bundle": tmp_path / "ca.crt"})
    assert build[:5] == ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    assert build[-1] == str(tmp_path)
    assert f"id=ca-bundle,src={tmp_path / 'ca.crt'}" in build
    assert "nofile=20000:20000" in build and "nproc=32768:32768" in build
    run = PODMAN.run_command("localhost/x:1", ["migrate"], entrypoint="python",
                             env={"A": "1"}, user="5")
    assert run[5:] == ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                       "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
                       "--entrypoint", "python", "--user", "5", "-e", "A=1",
                       "localhost/x:1", "migrate"]
    assert PODMAN.save_command("localhost/x:1", tmp_path / "x.tar")[5:] == [
        "save", "--format", "docker-archive", "-o", str(tmp_path / "x.tar"), "localhost/x:1"]


def test_docker_commands_are_plain(tmp_path):
    """docker gets no podman flags and no limits; its save writes a docker archive already."""
    build = DOCKER.build_command(tmp_path, tmp_path / "Dockerfile", ["a:1", "b:1"])
    assert build == ["docker", "build", "-f", str(tmp_path / "Dockerfile"), "-t", "a:1",
                     "-t", "b:1", str(tmp_path)]
    assert DOCKER.save_command("a:1", tmp_path / "a.tar") == [
        "docker", "save", "-o", str(tmp_path / "a.tar"), "a:1"]


def test_app_version_and_archive_names():
    """The tag is the chart's appVersion; archives are named after the image's last path part."""
    assert versions.app_version('name: x\nappVersion: "0.1.0"\n') == "0.1.0"
    assert versions.app_version("appVersion: 2.3.4  # why\n") == "2.3.4"
    with pytest.raises(ValueError):
        versions.app_version("version: 1\n")
    chart_version = versions.app_version(versions.CHART_YAML.read_text())
    assert versions.app_tag() == f"localhost/chanfleet:{chart_version}"
    assert versions.archive_path("localhost/chanfleet-test-redis:7.0-bookworm") == (
        versions.IMAGES_DIR / "chanfleet-test-redis-7.0-bookworm.tar")


def test_the_dockerfiles_base_is_the_one_base_py_makes():
    """The Dockerfile and every stand-in start from the image base.py can make locally."""
    files = [versions.REPO / "Dockerfile",
             *sorted(versions.CONTAINERFILES.glob("*/Containerfile"))]
    assert len(files) == 4
    for path in files:
        bases = re.findall(r"^FROM (\S+)", path.read_text(), flags=re.MULTILINE)
        assert bases and set(bases) == {versions.BASE_IMAGE}, path


def test_mmdebstrap_makes_a_slim_bookworm_with_security_updates():
    """minbase with debian-slim's dpkg filters, to stdout, with updates and security sources."""
    command = base.mmdebstrap_command()
    assert command[:4] == ["mmdebstrap", "--variant=minbase", "--quiet",
                           "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in command
    assert '--aptopt=Dir::Cache::pkgcache ""' in command
    assert command[command.index("bookworm") + 1] == "-"
    assert "deb http://deb.debian.org/debian-security bookworm-security main" in command
    assert base.import_command(PODMAN)[5:] == [
        "import", "--change", 'CMD ["bash"]', "-", versions.BASE_IMAGE]


def test_entrypoint_modules_are_read_from_the_script():
    """The modules run with `python -m` are found, once each."""
    text = "exec python -m app.x.server \"$@\"\npython -m app.x.server\npython manage.py\n"
    assert smoke.entrypoint_modules(text) == ["app.x.server"]
    program = smoke.imports_program(["a.b"])
    assert "django.setup()" in program and "'a.b'" in program


def test_smoke_judges_exit_code_and_output():
    """A check passes only with its exit code and its expected output."""
    check = smoke.Check("x", exit_code=64, expect=r"^usage:")
    assert smoke.judge(check, 64, "usage: entrypoint.sh {http|ws}\n")
    assert not smoke.judge(check, 0, "usage: x")
    assert not smoke.judge(check, 64, "nothing")


def test_app_checks_cover_every_role_without_baking_a_secret():
    """The smoke checks run each role's imports, migrate, the usage exit and check --deploy."""
    key = smoke.dummy_secret_key()
    checks = smoke.app_checks(key)
    text = " ".join(" ".join(c.args) for c in checks)
    ws_servers = smoke.entrypoint_modules(smoke.ENTRYPOINT.read_text())
    assert ws_servers, "entrypoint.sh runs the ws server with python -m"
    for needle in (*ws_servers, "daphne.server", "uvicorn_worker", "gunicorn",
                   "psycopg", "migrate", "--deploy", "entrypoint.sh"):
        assert needle in text
    assert any(c.exit_code == 64 and not c.args for c in checks)
    assert all(c.env.get("SECRET_KEY") in (None, key) for c in checks)
    assert len(key) >= 50 and smoke.dummy_secret_key() != key


def test_nginx_source_is_taken_from_the_crate(tmp_path):
    """The crate's nginx/ tree is extracted and its version must be the one named here."""
    prefix = f"{versions.NGINX_SRC_CRATE}-{versions.NGINX_SRC_CRATE_VERSION}"
    crate = tmp_path / "registry" / "cache" / "index" / f"{prefix}.crate"
    crate.parent.mkdir(parents=True)
    header = f'#define NGINX_VERSION      "{versions.NGINX_VERSION}"\n'.encode()
    with tarfile.open(crate, "w:gz") as archive:
        for name, data in ((f"{prefix}/Cargo.toml", b""),
                           (f"{prefix}/nginx/src/core/nginx.h", header),
                           (f"{prefix}/nginx/auto/configure", b"#!/bin/sh\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert standins.crate_file(tmp_path) == crate
    dest = standins.extract_nginx(crate, tmp_path / "src")
    assert sorted(p.name for p in dest.iterdir()) == ["auto", "src"]
    assert standins.source_version(header.decode()) == versions.NGINX_VERSION


def test_the_stand_in_nginx_is_new_enough_and_fed_the_chart_template():
    """nginx >= 1.27.3 (upstream `resolve`); the smoke runs nginx -t on the chart's template."""
    assert tuple(int(p) for p in versions.NGINX_VERSION.split(".")) >= (1, 27, 3)
    conf = standins.chart_nginx_conf()
    assert "server localhost:8000 resolve" in conf and "listen 8080;" in conf
    assert "@@" not in conf
    names = {c.name for c in standins.checks("nginx")}
    assert any("nginx -t" in n for n in names)


def test_every_stand_in_has_checks_and_a_local_tag():
    """redis, nginx and postgres each have smoke checks and a localhost/ name."""
    for name in standins.NAMES:
        assert standins.checks(name)
        assert versions.STANDIN_TAGS[name].startswith(f"localhost/chanfleet-test-{name}:")
