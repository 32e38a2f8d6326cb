"""Single-binary images written as docker-archive tars, and their import into containerd."""

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from . import paths


def _layer(binary: Path, target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        # Mount points the runtime fills in (resolv.conf, hosts, a writable /tmp).
        for folder, mode in (("etc", 0o755), ("tmp", 0o1777), ("dev", 0o755), ("proc", 0o555)):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, mode
            layer.addfile(info)
        info = tarfile.TarInfo(target.lstrip("/"))
        info.size, info.mode = binary.stat().st_size, 0o755
        with open(binary, "rb") as source:
            layer.addfile(info, source)
    return buffer.getvalue()


def image_config(diff_id: str, entrypoint: list[str], cmd: list[str]) -> dict:
    """Return the image configuration of a one-layer linux/amd64 image."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "Env": ["PATH=/"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "deploy.cluster.images"}],
    }


def write_archive(
    out: Path, tag: str, binary: Path, entrypoint: list[str], cmd: list[str] | None = None
) -> Path:
    """Write a docker-archive tar of an image holding one static binary at entrypoint[0]."""
    layer = _layer(binary, entrypoint[0])
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(image_config(diff_id, entrypoint, cmd or []), sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as archive:
        for name, data in (
            (layer_name, layer),
            (config_name, config),
            ("manifest.json", manifest.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out


def load(archive: Path, base_name: str | None = None, timeout: float = 300) -> str:
    """Import a docker-archive or OCI tar into containerd's k8s.io namespace; return ctr's text."""
    # A docker-archive keeps its tags (podman save's default: localhost/NAME:TAG); an OCI archive
    # whose index names only a tag needs base_name (the repository, e.g. localhost/chanfleet).
    argv = [str(paths.CTR), "--address", str(paths.CONTAINERD_SOCKET), "-n", "k8s.io",
            "images", "import"]  # fmt: skip
    if base_name:
        argv += ["--base-name", base_name]
    result = subprocess.run(
        [*argv, str(archive)], check=True, capture_output=True, text=True, timeout=timeout
    )
    return result.stdout


def list_images(timeout: float = 30) -> list[str]:
    """Return the names of the images in containerd's k8s.io namespace."""
    result = subprocess.run(
        [str(paths.CTR), "--address", str(paths.CONTAINERD_SOCKET), "-n", "k8s.io",
         "images", "ls", "-q"],
        check=True, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return result.stdout.split()
