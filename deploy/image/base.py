"""The base image debian:bookworm-slim: present, pulled, or made from Debian's packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile

from deploy.image.engine import Engine, apt_install
from deploy.image.timing import step
from deploy.image.versions import (
    BASE_IMAGE,
    DEBIAN_MIRROR,
    DEBIAN_SECURITY_MIRROR,
    DEBIAN_SUITE,
)

# What debian:*-slim leaves out of every package (its dpkg filters): manuals, docs but the
# copyright files, translations.
SLIM_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


def sources(suite: str = DEBIAN_SUITE) -> list[str]:
    """Return the image's apt sources: the release, its updates and its security updates."""
    return [
        f"deb {DEBIAN_MIRROR} {suite} main",
        f"deb {DEBIAN_MIRROR} {suite}-updates main",
        f"deb {DEBIAN_SECURITY_MIRROR} {suite}-security main",
    ]


# The apt settings of Debian's official images (their /etc/apt/apt.conf.d/docker-*): no
# downloaded .deb files or package caches left in a layer after an install, no translations,
# compressed indexes, suggestions not kept by autoremove. --aptopt options stay in the image.
DOCKER_APT_OPTIONS = (
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
    '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }',
    'Dir::Cache::pkgcache ""',
    'Dir::Cache::srcpkgcache ""',
    'Acquire::Languages "none"',
    'Acquire::GzipIndexes "true"',
    'Apt::AutoRemove::SuggestsImportant "false"',
)

# Merged /usr set up by mmdebstrap's own hook, as in Debian's images: without it bookworm's
# minbase installs the usrmerge package, which pulls in all of perl.
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"


def mmdebstrap_command(suite: str = DEBIAN_SUITE) -> list[str]:
    """Return the mmdebstrap command that writes a slim minbase root filesystem tar to stdout."""
    command = ["mmdebstrap", "--variant=minbase", "--quiet", f"--hook-dir={MERGED_USR_HOOK}"]
    for option in SLIM_DPKG_OPTIONS:
        command.append(f"--dpkgopt={option}")
    for option in DOCKER_APT_OPTIONS:
        command.append(f"--aptopt={option}")
    return [*command, suite, "-", *sources(suite)]


def import_command(engine: Engine, tag: str = BASE_IMAGE) -> list[str]:
    """Return the command that imports a root filesystem tar from stdin as tag."""
    return engine.cmd("import", "--change", 'CMD ["bash"]', "-", tag)


def make(engine: Engine, tag: str = BASE_IMAGE) -> None:
    """Make the base from Debian's packages with mmdebstrap and import it under its real name."""
    if not shutil.which("mmdebstrap"):
        apt_install(["mmdebstrap"])
    with step(f"make {tag} with mmdebstrap"), tempfile.TemporaryFile() as log:
        # mmdebstrap's hooks talk on stderr even with --quiet: shown only when it fails.
        strap = subprocess.Popen(mmdebstrap_command(), stdout=subprocess.PIPE, stderr=log)
        imported = engine.run(import_command(engine, tag), stdin=strap.stdout,
                              stdout=subprocess.DEVNULL)
        strap.stdout.close()
        if strap.wait() != 0 or imported.returncode != 0:
            log.seek(0)
            print(log.read().decode(errors="replace")[-4000:], file=sys.stderr)
            raise SystemExit(f"making {tag} failed (mmdebstrap {strap.returncode}, "
                             f"import {imported.returncode})")


def ensure(engine: Engine, tag: str = BASE_IMAGE) -> str:
    """Make sure tag is stored locally and return how: "present", "pulled" or "made"."""
    if engine.has_image(tag):
        return "present"
    with step(f"pull {tag}"):
        try:
            pulled = engine.run(engine.cmd("pull", tag), timeout=600).returncode == 0
        except subprocess.TimeoutExpired:
            pulled = False
    if pulled:
        return "pulled"
    print(f"{tag} cannot be pulled here: making it from Debian's packages", flush=True)
    make(engine, tag)
    return "made"
