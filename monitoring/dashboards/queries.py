"""Read the PromQL expressions of the committed dashboard JSON files.

Only the standard library is used, so the live test and the unit tests can list the
expressions without grafana-foundation-sdk. ``dashboard_queries()`` returns the expressions as
written in Grafana (with ``$instance``, ``$__rate_interval``...); ``to_promql()`` substitutes
the Grafana variables so Prometheus itself can run or parse them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

DASHBOARD_DIR = (Path(__file__).resolve().parents[2] / "deploy" / "helm" / "chanfleet" / "files"
                 / "dashboards")

# Values the Grafana variables take when an expression is sent to Prometheus directly.
DEFAULT_VARIABLES = {
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Return the committed dashboard JSON files, sorted by name."""
    return sorted(directory.glob("*.json"))


def _walk(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        # Collapsed rows hold their panels inside the row.
        yield from _walk(panel.get("panels") or [])


def panel_queries(model: dict) -> list[tuple[str, str]]:
    """Return (panel title, expr) for every target of every panel of one dashboard model."""
    found = []
    for panel in _walk(model.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr:
                found.append((panel.get("title", ""), expr))
    return found


def dashboard_queries(directory: Path = DASHBOARD_DIR) -> list[tuple[str, str]]:
    """Return ("<dashboard uid>: <panel title>", expr) for every dashboard expression."""
    found = []
    for path in dashboard_files(directory):
        model = json.loads(path.read_text())
        uid = model.get("uid", path.stem)
        found += [(f"{uid}: {title}", expr) for title, expr in panel_queries(model)]
    return found


def to_promql(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana variables by concrete values; raise KeyError for an unknown variable."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def substitute(match: re.Match) -> str:
        return values[match.group(1) or match.group(2)]

    return _VARIABLE.sub(substitute, expr)


def expressions(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Return every dashboard expression, as written in the JSON files."""
    return [expr for _, expr in dashboard_queries(directory)]


if __name__ == "__main__":
    for name, expr in dashboard_queries():
        print(f"{name}\n    {expr}")
