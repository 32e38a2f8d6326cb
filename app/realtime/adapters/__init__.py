"""Every use of a library's private API, one module per library, pinned to the versions read.

Private API (underscored names, undocumented attributes, subclassed internals, a patched
method) may change in any release, silently. It is used in these modules only. Each names its
distribution (`PACKAGE`), the versions it was written against (`SUPPORTED`, a PEP 440
specifier matching requirements.lock) and, in its docstring, every private name it relies on;
test_versions.py fails, naming the adapter, when the installed version is outside the range.
Upgrading a library means re-reading its adapter against the new release, then widening
SUPPORTED.
"""


def version_problem(adapter) -> str | None:
    """Why the installed version of an adapter's library is not one it was written for, or None."""
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    installed = metadata.version(adapter.PACKAGE)
    if SpecifierSet(adapter.SUPPORTED).contains(installed, prereleases=True):
        return None
    path = adapter.__name__.replace(".", "/") + ".py"
    return (f"{path} was written for {adapter.PACKAGE} {adapter.SUPPORTED}, but {installed} is "
            f"installed: check each private use its docstring lists against {installed}, then "
            "widen its SUPPORTED")
