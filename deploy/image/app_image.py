"""The chanfleet image: build it from the Dockerfile, smoke-test every role, save it as a tar."""

from __future__ import annotations

from pathlib import Path

from deploy.image import base, smoke
from deploy.image.engine import Engine, host_ca_bundle
from deploy.image.timing import step
from deploy.image.versions import REPO, archive_path


def build_secrets() -> dict[str, Path]:
    """Return the build secrets: the host's CA bundle, so pip trusts what the host trusts."""
    bundle = host_ca_bundle()
    return {"ca-bundle": bundle} if bundle else {}


def save(engine: Engine, tag: str) -> Path:
    """Save tag as a docker-archive tar under build/images/ and return its path."""
    path = archive_path(tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with step(f"save {tag} to {path.relative_to(REPO)}"):
        engine.run(engine.save_command(tag, path), check=True)
    return path


def build(engine: Engine, tag: str) -> Path:
    """Build, smoke-test and save the chanfleet image; return the archive's path."""
    how = base.ensure(engine)
    print(f"base {base.BASE_IMAGE}: {how}", flush=True)
    with step(f"build {tag} ({engine.name})"):
        engine.run(engine.build_command(REPO, REPO / "Dockerfile", [tag], build_secrets()),
                   check=True)
    with step(f"smoke-test {tag}"):
        results = smoke.run(engine, tag, smoke.app_checks(smoke.dummy_secret_key()))
    failed = [result.check.name for result in results if not result.passed]
    if failed:
        raise SystemExit(f"smoke checks failed: {', '.join(failed)}")
    print(f"smoke: all {len(results)} checks passed", flush=True)
    path = save(engine, tag)
    print(f"image {tag}: {engine.image_size(tag) / 1e6:.0f} MB, archive {path} "
          f"{path.stat().st_size / 1e6:.0f} MB", flush=True)
    return path
