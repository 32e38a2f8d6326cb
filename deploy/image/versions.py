"""Names, tags and versions of the images this package builds, and where their archives go."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CHART_YAML = REPO / "deploy" / "helm" / "chanfleet" / "Chart.yaml"
IMAGES_DIR = REPO / "build" / "images"
CONTAINERFILES = Path(__file__).resolve().parent / "containerfiles"

# The one base of every image here: Debian's own slim image, which a machine without a
# container registry can remake from Debian's packages (base.py).
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# Debian 12's python3; the lock's environment markers are evaluated for it.
IMAGE_PYTHON = "3.11.2"

# Fully qualified, so the name is the same with podman and docker and after
# `ctr images import` (a bare "chanfleet" would become docker.io/library/chanfleet there).
APP_REPOSITORY = "localhost/chanfleet"

# nginx for the stand-in: the chart's upstreams use `server ... resolve` (nginx >= 1.27.3),
# newer than Debian's; crates.io's nginx-src carries the source (crate version + nginx version).
NGINX_SRC_CRATE = "nginx-src"
NGINX_SRC_CRATE_VERSION = "1.28.5+1.28.3"
NGINX_VERSION = "1.28.3"

# The stand-ins for the chart's public images, for a local test cluster only.
STANDIN_TAGS = {
    "redis": f"localhost/chanfleet-test-redis:7.0-{DEBIAN_SUITE}",
    "nginx": f"localhost/chanfleet-test-nginx:{NGINX_VERSION}-{DEBIAN_SUITE}",
    "postgres": f"localhost/chanfleet-test-postgres:15-{DEBIAN_SUITE}",
}


def app_version(chart_yaml: str) -> str:
    """Return the chart's appVersion (the chanfleet image tag) from Chart.yaml's text."""
    match = re.search(r"""^appVersion:\s*["']?([^"'\s#]+)["']?\s*(?:#.*)?$""", chart_yaml,
                      flags=re.MULTILINE)
    if not match:
        raise ValueError("Chart.yaml has no appVersion")
    return match.group(1)


def app_tag() -> str:
    """Return the chanfleet image's name and tag, localhost/chanfleet:<appVersion>."""
    return f"{APP_REPOSITORY}:{app_version(CHART_YAML.read_text(encoding='utf-8'))}"


def archive_path(tag: str) -> Path:
    """Return where an image's docker-archive tar is saved: build/images/<name>-<tag>.tar."""
    name, _, version = tag.rpartition(":")
    return IMAGES_DIR / f"{name.rpartition('/')[2]}-{version}.tar"
