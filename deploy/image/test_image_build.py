"""`python -m deploy.image image` for real: build, smoke-test every role, save the archive."""

import json
import subprocess
import sys
import tarfile

import pytest

from deploy.image import smoke
from deploy.image.versions import REPO, app_tag, archive_path


@pytest.mark.topology
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_make_image_builds_smoke_tests_and_saves_the_image():
    """The image builds (base made when it cannot be pulled), passes every smoke check, is saved."""
    done = subprocess.run([sys.executable, "-m", "deploy.image", "image"], cwd=REPO,
                          capture_output=True, text=True, timeout=3500)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    checks = smoke.app_checks("unused")
    for check in checks:
        assert any(line.startswith("smoke ok") and line.endswith(f"{check.name} (exit "
                                                                 f"{check.exit_code})")
                   for line in output.splitlines()), (check.name, output[-6000:])
    assert f"smoke: all {len(checks)} checks passed" in output
    assert "timings:" in output
    tag = app_tag()
    with tarfile.open(archive_path(tag)) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    assert any(tag in entry.get("RepoTags", []) for entry in manifest)
