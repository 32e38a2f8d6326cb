"""Each adapter of a library's private API runs only on the versions it was written for."""

import importlib
import pkgutil
import types
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from app.realtime import adapters
from app.realtime.adapters import version_problem

ADAPTERS = sorted(module.name for module in pkgutil.iter_modules(adapters.__path__)
                  if not module.name.startswith("test_"))
LOCK = Path(__file__).resolve().parents[3] / "requirements.lock"


def adapter(name: str):
    return importlib.import_module(f"app.realtime.adapters.{name}")


def locked_versions() -> dict[str, str]:
    """{canonical name: version} of requirements.lock's pins."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        requirement = line.split(";")[0].split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_installed_library_is_one_its_adapter_was_written_for(name):
    """A library upgraded past its adapter's SUPPORTED range fails here, naming the adapter."""
    problem = version_problem(adapter(name))
    assert problem is None, problem


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_locked_version_is_one_its_adapter_was_written_for(name):
    """requirements.lock pins a version inside the adapter's range (a bump fails before install)."""
    module = adapter(name)
    locked = locked_versions()[canonicalize_name(module.PACKAGE)]
    assert SpecifierSet(module.SUPPORTED).contains(locked), (
        f"requirements.lock pins {module.PACKAGE}=={locked}, outside {module.SUPPORTED} of "
        f"app/realtime/adapters/{name}.py: read the adapter against it, then widen SUPPORTED")


def test_one_adapter_per_library():
    """No library's private use is split over two adapters."""
    packages = [canonicalize_name(adapter(name).PACKAGE) for name in ADAPTERS]
    assert len(packages) == len(set(packages)), packages


def test_a_version_outside_the_range_names_the_adapter_and_what_to_do():
    """The failure says which file to re-read, against which version."""
    stale = types.SimpleNamespace(__name__="app.realtime.adapters.uvicorn", PACKAGE="uvicorn",
                                  SUPPORTED=">=0.1,<0.2")
    problem = version_problem(stale)
    installed = metadata.version("uvicorn")
    assert problem.startswith(
        f"app/realtime/adapters/uvicorn.py was written for uvicorn >=0.1,<0.2, but {installed} "
        "is installed")
    assert "widen its SUPPORTED" in problem
