"""Building the cluster's binaries and images with Go, once per pinned version."""

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import images, paths, settings, versions

STAMP = paths.BIN_DIR / "versions.json"


@dataclass(frozen=True)
class Target:
    """One `go build` run: its Go module folder, packages, outputs and what pins it."""

    name: str
    module: str
    packages: tuple[str, ...]
    outputs: tuple[str, ...]
    ldflags: str
    tags: str = ""


def sources_digest(folder: Path) -> str:
    """Return a digest of a Go module's go.mod, go.sum and .go files (our own sources)."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file() and (file.suffix == ".go" or file.name in ("go.mod", "go.sum")):
            digest.update(str(file.relative_to(folder)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def targets() -> list[Target]:
    """Return every build the cluster needs."""
    kube = versions.KUBE_COMMANDS
    return [
        Target(
            "kubernetes",
            "kube",
            tuple(f"k8s.io/kubernetes/cmd/{command}" for command in kube),
            kube,
            versions.kube_ldflags(),
            # providerless leaves out the cloud providers' SDKs.
            tags="providerless",
        ),
        Target("helm", "helm", ("helm.sh/helm/v3/cmd/helm",), ("helm",), versions.helm_ldflags()),
        Target("coredns", "coredns", (".",), ("coredns",), "-s -w"),
        Target("images", "images", ("./pause", "./probe"), ("pause", "probe"), "-s -w"),
    ]


def stamp(target: Target) -> str:
    """Return what identifies a target's build: its pinned sources and flags."""
    return f"{sources_digest(paths.GO_DIR / target.module)}:{target.ldflags}:{target.tags}"


def go_binary() -> str:
    """Return the go command, from PATH or Go's usual install folder."""
    found = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(found).exists():
        raise SystemExit("go is not installed (expected on PATH or at /usr/local/go/bin/go)")
    return found


def _built() -> dict[str, str]:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}


def up_to_date(target: Target) -> bool:
    """Tell whether a target's outputs exist and were built from the current pins."""
    present = all((paths.BIN_DIR / output).exists() for output in target.outputs)
    return present and _built().get(target.name) == stamp(target)


def go_build(target: Target, timeout: float = 1800) -> None:
    """Build one target into build/cluster/bin with static, stripped binaries."""
    paths.BIN_DIR.mkdir(parents=True, exist_ok=True)
    argv = [go_binary(), "build", "-trimpath", "-ldflags", target.ldflags, "-o"]
    argv.append(str(paths.BIN_DIR / target.outputs[0]) if len(target.outputs) == 1 else
                str(paths.BIN_DIR) + "/")  # fmt: skip
    if target.tags:
        argv += ["-tags", target.tags]
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    subprocess.run(
        [*argv, *target.packages], cwd=paths.GO_DIR / target.module, env=env, check=True,
        timeout=timeout,
    )  # fmt: skip
    built = _built()
    built[target.name] = stamp(target)
    STAMP.write_text(json.dumps(built, indent=2) + "\n")


def build_all(log=print) -> dict[str, float]:
    """Build whatever is missing or out of date; return the seconds each build took."""
    timings = {}
    for target in targets():
        if up_to_date(target):
            continue
        log(f"building {target.name} ({', '.join(target.outputs)}) ...")
        started = time.monotonic()
        go_build(target)
        timings[target.name] = time.monotonic() - started
        log(f"built {target.name} in {timings[target.name]:.0f} s")
    write_images()
    return timings


def write_images() -> dict[str, Path]:
    """Write the pause and probe image archives from the built binaries (when missing)."""
    archives = {
        settings.PAUSE_IMAGE: (paths.IMAGE_DIR / "pause.tar", "pause", ["/pause"], []),
        settings.PROBE_IMAGE: (paths.IMAGE_DIR / "probe.tar", "probe", ["/probe"], ["serve"]),
    }
    written = {}
    for tag, (archive, binary, entrypoint, cmd) in archives.items():
        source = paths.BIN_DIR / binary
        if not archive.exists() or archive.stat().st_mtime < source.stat().st_mtime:
            images.write_archive(archive, tag, source, entrypoint, cmd)
        written[tag] = archive
    return written
