"""What the image's code imports, and whether requirements.lock pins it all for its Python."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

from deploy.image.versions import IMAGE_PYTHON, REPO

# The project's own top-level packages: never a distribution.
LOCAL_PACKAGES = frozenset({"app", "deploy", "manage"})

# Python files the image runs: app/ without its tests (the same files .dockerignore leaves
# out) and the gunicorn settings.
TEST_FILE_PATTERNS = ("test_*.py", "conftest.py", "settings_test.py")

# A dotted path ending in a class name ("django_redis.cache.RedisCache"): ASGI event types
# such as "websocket.close" look dotted too but name no module.
_DOTTED_CLASS = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\.[A-Z]\w*$")


@dataclass(frozen=True)
class Pin:
    """One line of a lock file: name==version, with an optional environment marker."""

    name: str
    version: str
    marker: Marker | None = None


def normalize(name: str) -> str:
    """Return a distribution name in PEP 503 form (lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, Pin]:
    """Return the pins of a requirements lock, keyed by normalized name."""
    pins: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = re.split(r"\s#", raw, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        versions = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if len(versions) != 1:
            raise ValueError(f"not an exact pin: {raw!r}")
        pins[normalize(requirement.name)] = Pin(requirement.name, versions[0],
                                                requirement.marker)
    return pins


def image_sources(repo: Path = REPO) -> list[Path]:
    """Return the Python files the image runs: app/ without tests, and deploy/gunicorn.conf.py."""
    files = [
        path for path in sorted((repo / "app").rglob("*.py"))
        if not any(path.match(pattern) for pattern in TEST_FILE_PATTERNS)
    ]
    return [*files, repo / "deploy" / "gunicorn.conf.py"]


def imported_modules(source: str, importable: Iterable[str] = ()) -> set[str]:
    """Return the top-level modules a source imports, plus those of dotted class paths in strings.

    Settings name backends, middleware and gunicorn's worker class as strings
    ("django_redis.cache.RedisCache"), which are imports all the same.
    """
    tree = ast.parse(source)
    names: set[str] = set()
    known = set(importable)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and _DOTTED_CLASS.match(node.value)):
            head = node.value.partition(".")[0]
            if head in known:
                names.add(head)
    return names


def third_party(modules: Iterable[str]) -> set[str]:
    """Return the modules that are neither the standard library nor the project's own."""
    return {
        name for name in modules
        if name not in sys.stdlib_module_names and name not in LOCAL_PACKAGES
        and name != "__future__"
    }


def unprovided_imports(modules: Iterable[str], distributions: Collection[str],
                       providers: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Return each module none of `distributions` (normalized names: a lock's pins, or what
    pyproject.toml declares) provides, with the distributions that do."""
    missing: dict[str, list[str]] = {}
    for module in sorted(modules):
        dists = providers.get(module, [])
        if not any(normalize(dist) in distributions for dist in dists):
            missing[module] = sorted(set(dists))
    return missing


def declared_dependencies(pyproject: str) -> set[str]:
    """Return the runtime dependencies pyproject.toml declares, normalized, extras included
    (`redis[hiredis]` declares hiredis too).

    app/ must import only these: a module that only arrives with another package's
    requirements leaves the image the day that package stops requiring it, though the lock
    pins it today.
    """
    declared: set[str] = set()
    for line in tomllib.loads(pyproject)["project"]["dependencies"]:
        requirement = Requirement(line)
        declared.add(normalize(requirement.name))
        declared.update(normalize(extra) for extra in requirement.extras)
    return declared


def marker_environment(python_full_version: str) -> dict[str, str]:
    """Return a Linux CPython marker environment for the given interpreter version."""
    major, minor, *_ = python_full_version.split(".")
    return {
        "python_version": f"{major}.{minor}",
        "python_full_version": python_full_version,
        "implementation_name": "cpython",
        "implementation_version": python_full_version,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "extra": "",
    }


def applies(pin: Pin, environment: Mapping[str, str]) -> bool:
    """Return whether a pin's marker (if any) holds in the environment."""
    return pin.marker is None or pin.marker.evaluate(dict(environment))


def closure_gaps(pins: Mapping[str, Pin], requires: Mapping[str, Iterable[str]],
                 environment: Mapping[str, str]) -> list[str]:
    """Return what the pinned distributions require under environment that the lock lacks."""
    gaps: list[str] = []
    for key, pin in sorted(pins.items()):
        if not applies(pin, environment):
            continue
        for line in requires.get(key, ()):
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(dict(environment)):
                continue
            wanted = pins.get(normalize(requirement.name))
            if wanted is None or not applies(wanted, environment):
                gaps.append(f"{pin.name} {pin.version} requires {line}: not pinned")
            elif not requirement.specifier.contains(wanted.version, prereleases=True):
                gaps.append(f"{pin.name} {pin.version} requires {line}: pinned {wanted.version}")
    return gaps


def dev_mismatches(pins: Mapping[str, Pin], dev_pins: Mapping[str, Pin],
                   dev_environment: Mapping[str, str]) -> list[str]:
    """Return pins unlike the dev lock's, or missing there though dev's Python needs them."""
    problems: list[str] = []
    for key, pin in sorted(pins.items()):
        dev = dev_pins.get(key)
        if dev is None:
            # Only a pin for another interpreter (the image's older Python) may be missing.
            if applies(pin, dev_environment):
                problems.append(f"{pin.name}=={pin.version}: not in requirements-dev.lock")
        elif dev.version != pin.version:
            problems.append(f"{pin.name}=={pin.version}: requirements-dev.lock has {dev.version}")
    return problems


def image_environment() -> dict[str, str]:
    """Return the marker environment of the image's interpreter (Debian 12's python3)."""
    return marker_environment(IMAGE_PYTHON)
