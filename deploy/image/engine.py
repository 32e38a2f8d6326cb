"""The container engine: docker when a Docker engine answers, else podman, and their commands."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Debian packages that make podman work on a machine without a Docker engine: runc because
# crun refuses hybrid cgroup hierarchies.
PODMAN_APT_PACKAGES = ("podman", "runc", "uidmap")
PODMAN_GLOBAL_ARGS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")

# A CA bundle the build host trusts, handed to the build as a secret (see the Dockerfile).
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def choose(docker_answers: bool, podman_path: str | None) -> str | None:
    """Return "docker" when a Docker engine answers, else "podman" when installed, else None."""
    if docker_answers:
        return "docker"
    if podman_path:
        return "podman"
    return None


def _cap(value: int, ceiling: int) -> int:
    return ceiling if value == resource.RLIM_INFINITY or value < 0 else min(value, ceiling)


def podman_ulimits(nofile: int, nproc: int, pid_max: int) -> tuple[str, ...]:
    """Return explicit --ulimit flags at or below this process's limits (the defaults fail)."""
    # runc here refuses an nproc limit above kernel.pid_max, even when it is our own limit.
    files = _cap(nofile, 1 << 20)
    procs = _cap(nproc, pid_max)
    return ("--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={procs}:{procs}")


def _current_ulimits() -> tuple[str, ...]:
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        pid_max = 32768
    return podman_ulimits(resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                          resource.getrlimit(resource.RLIMIT_NPROC)[0], pid_max)


def host_ca_bundle() -> Path | None:
    """Return the build host's CA bundle (PIP_CERT or SSL_CERT_FILE first), if it has one."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), *CA_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Engine:
    """One container engine and the flags every command of it needs on this machine."""

    name: str
    global_args: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def cmd(self, *args: str) -> list[str]:
        """Return a command line of this engine."""
        return [self.name, *self.global_args, *args]

    def build_command(self, context: Path, containerfile: Path, tags: Sequence[str],
                      secrets: Mapping[str, Path] | None = None) -> list[str]:
        """Return the command that builds containerfile in context under every tag."""
        args = ["build", "-f", str(containerfile)]
        for tag in tags:
            args += ["-t", tag]
        for name, path in (secrets or {}).items():
            args += ["--secret", f"id={name},src={path}"]
        if self.name == "podman":
            # The host's network: no bridge, firewall or DNS setup needed for apt and pip.
            args += ["--network", "host", *self.limits]
        return self.cmd(*args, str(context))

    def run_command(self, image: str, args: Sequence[str] = (), *, entrypoint: str | None = None,
                    env: Mapping[str, str] | None = None, user: str | None = None) -> list[str]:
        """Return the command that runs image like Kubernetes would: read-only root, /tmp tmpfs."""
        flags = ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                 *self.limits]
        if entrypoint is not None:
            flags += ["--entrypoint", entrypoint]
        if user is not None:
            flags += ["--user", user]
        for key, value in (env or {}).items():
            flags += ["-e", f"{key}={value}"]
        return self.cmd(*flags, image, *args)

    def save_command(self, tag: str, path: Path) -> list[str]:
        """Return the command that writes tag as a docker-archive tar (what ctr imports)."""
        if self.name == "podman":
            return self.cmd("save", "--format", "docker-archive", "-o", str(path), tag)
        return self.cmd("save", "-o", str(path), tag)

    def exists_command(self, tag: str) -> list[str]:
        """Return a command that exits 0 when the image is stored locally."""
        return self.cmd("image", "inspect", "--format", "{{.Id}}", tag)

    def run(self, command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run one command of this engine with its environment."""
        return subprocess.run(list(command), env={**os.environ, **self.env}, **kwargs)

    def has_image(self, tag: str) -> bool:
        """Return whether tag is stored locally."""
        return self.run(self.exists_command(tag), capture_output=True).returncode == 0

    def image_size(self, tag: str) -> int:
        """Return the image's size in bytes as the engine reports it."""
        out = self.run(self.cmd("image", "inspect", "--format", "{{.Size}}", tag),
                       capture_output=True, text=True, check=True).stdout
        return int(out.strip() or 0)


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages with apt-get when root, else stop with the command to run."""
    if os.geteuid() != 0:
        sys.exit(f"please run: sudo apt-get install {' '.join(packages)}")
    print(f"installing with apt: {' '.join(packages)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL}
    if subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env,
                      **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, check=True,
                       **quiet)


def detect() -> Engine:
    """Return docker when its engine answers, else podman (installed with apt when missing)."""
    name = choose(_docker_answers(), shutil.which("podman"))
    if name == "docker":
        # BuildKit: the Dockerfile's RUN --mount=type=secret needs it.
        return Engine("docker", env={"DOCKER_BUILDKIT": "1"})
    if name is None or not shutil.which("runc"):
        apt_install(PODMAN_APT_PACKAGES)
    return Engine("podman", PODMAN_GLOBAL_ARGS, _current_ulimits())
