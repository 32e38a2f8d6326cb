"""One tiny placeholder syntax shared by the local topology and the Helm chart.

Templates under ``deploy/`` hold ``@@NAME@@`` placeholders. Python fills them here for the
local topology; the chart fills the very same file with Helm's ``replace`` function, so a
placeholder must be a plain token that both can substitute (no logic inside templates).
"""

import re

PLACEHOLDER = re.compile(r"@@([A-Z][A-Z0-9_]*)@@")


def placeholders(template: str) -> set[str]:
    """Return the names of every placeholder in a template."""
    return set(PLACEHOLDER.findall(template))


def render(template: str, values: dict[str, object]) -> str:
    """Fill every placeholder, refusing missing or unknown names so a typo cannot pass silently."""
    wanted = placeholders(template)
    missing = wanted - values.keys()
    unknown = values.keys() - wanted
    if missing or unknown:
        raise KeyError(f"template placeholders missing={sorted(missing)} unknown={sorted(unknown)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
