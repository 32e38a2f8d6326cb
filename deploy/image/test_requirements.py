"""requirements.lock pins all the image's code imports, for the image's Python, as dev does."""

import importlib.metadata
import platform

from deploy.image import requirements as req
from deploy.image.versions import REPO

LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"


def _lock(path=LOCK):
    return req.parse_lock(path.read_text(encoding="utf-8"))


def _providers() -> dict[str, list[str]]:
    # The dev venv has every distribution of both locks installed.
    return importlib.metadata.packages_distributions()


def _requires(name: str) -> list[str]:
    # A pin only the image's Python needs (async-timeout) is not installed in the dev venv;
    # it has no requirements of its own.
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def _imports() -> set[str]:
    providers = _providers()
    modules: set[str] = set()
    for path in req.image_sources():
        modules |= req.imported_modules(path.read_text(encoding="utf-8"), providers)
    return req.third_party(modules)


def test_every_third_party_import_of_the_image_code_is_pinned():
    """Each module imported by app/ (not tests) and gunicorn.conf.py comes from a pinned dist."""
    modules = _imports()
    assert {"django", "channels", "websockets", "uvicorn_worker"} <= modules
    assert req.unprovided_imports(modules, _lock(), _providers()) == {}


def test_every_third_party_import_of_the_image_code_is_a_declared_dependency():
    """What app/ imports itself is declared in pyproject.toml, not only brought by another dist."""
    declared = req.declared_dependencies((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert {"zope-interface", "websockets", "asgiref", "hiredis"} <= declared
    assert req.unprovided_imports(_imports(), declared, _providers()) == {}


def test_the_lock_is_closed_under_the_image_python():
    """Every requirement of a pinned dist, evaluated for Debian 12's Python, is pinned too."""
    pins = _lock()
    requires = {key: _requires(pin.name) for key, pin in pins.items()}
    assert req.closure_gaps(pins, requires, req.image_environment()) == []


def test_every_pin_equals_the_dev_lock_pin():
    """requirements.lock and requirements-dev.lock agree; extra pins are for another Python only."""
    dev_environment = req.marker_environment(platform.python_version())
    assert req.dev_mismatches(_lock(), _lock(DEV_LOCK), dev_environment) == []


def test_parse_lock_reads_markers_and_comments():
    """Pins are keyed by normalized name; markers and inline comments are understood."""
    pins = req.parse_lock(
        "# a comment\nzope.interface==8.7\n"
        'async-timeout==5.0.1 ; python_full_version < "3.11.3"  # why\n'
    )
    assert pins["zope-interface"].version == "8.7"
    marker = pins["async-timeout"].marker
    assert marker is not None
    assert marker.evaluate(req.marker_environment("3.11.2"))
    assert not marker.evaluate(req.marker_environment("3.11.7"))


def test_imported_modules_sees_imports_and_dotted_strings():
    """Plain, from and lazy imports count, and so do dotted strings naming an importable module."""
    source = (
        "import os, django.db\nfrom redis import asyncio\nfrom . import local\n"
        "def f():\n    import websockets\n"
        "BACKEND = 'django_redis.cache.RedisCache'\nNOTE = 'redis.Conf'\nT = 'websocket.close'\n"
    )
    modules = req.imported_modules(source, {"django_redis", "redis", "websocket"})
    assert modules == {"os", "django", "redis", "websockets", "django_redis"}
    assert req.third_party(modules | {"app", "__future__"}) == {
        "django", "redis", "websockets", "django_redis"}


def test_unprovided_imports_names_the_missing_distribution():
    """A module whose distribution is not pinned is reported with its providers."""
    pins = req.parse_lock("Django==5.2.19\n")
    providers = {"django": ["Django"], "websockets": ["websockets"]}
    assert req.unprovided_imports({"django", "websockets", "nowhere"}, pins, providers) == {
        "nowhere": [], "websockets": ["websockets"]}


def test_unprovided_imports_names_a_module_only_a_dependency_brings():
    declared = req.declared_dependencies(
        '[project]\ndependencies = ["daphne==4.2.3", "redis[hiredis]==8.1.0"]\n')
    assert declared == {"daphne", "redis", "hiredis"}
    providers = {"daphne": ["daphne"], "hiredis": ["hiredis"],
                 "zope": ["zope.interface", "zope.event"]}
    assert req.unprovided_imports({"daphne", "hiredis", "zope"}, declared, providers) == {
        "zope": ["zope.event", "zope.interface"]}


def test_closure_gaps_follow_markers_and_versions():
    """A requirement only counts when its marker holds; a pinned version must satisfy it."""
    pins = req.parse_lock("redis==8.1.0\nhyperlink==21.0.0\nidna==2.4\n")
    requires = {
        "redis": ['async-timeout>=4.0.3; python_full_version < "3.11.3"'],
        "hyperlink": ["idna>=2.5"],
    }
    old, new = req.marker_environment("3.11.2"), req.marker_environment("3.11.13")
    assert req.closure_gaps(pins, requires, new) == [
        "hyperlink 21.0.0 requires idna>=2.5: pinned 2.4"]
    assert len(req.closure_gaps(pins, requires, old)) == 2


def test_dev_mismatches_allow_only_pins_for_another_python():
    """A pin the dev lock lacks is fine only when its marker excludes the dev interpreter."""
    dev = req.parse_lock("redis==8.1.0\n")
    lock = req.parse_lock(
        'redis==8.1.0\nasync-timeout==5.0.1 ; python_full_version < "3.11.3"\n')
    assert req.dev_mismatches(lock, dev, req.marker_environment("3.11.7")) == []
    assert req.dev_mismatches(lock, dev, req.marker_environment("3.11.2")) == [
        "async-timeout==5.0.1: not in requirements-dev.lock"]
    assert req.dev_mismatches(req.parse_lock("redis==8.0.0\n"), dev, {}) == [
        "redis==8.0.0: requirements-dev.lock has 8.1.0"]
