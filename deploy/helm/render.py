"""Sync the chart's copies of shared files, then render the Helm chart into a folder for review.

Helm can read only files inside the chart, so deploy/helm/chanfleet/files/ holds byte-identical
copies of files that live elsewhere (the nginx and Sentinel templates, the alert rules, the
Grafana dashboards). This script is the one way they are updated::

    python -m deploy.helm.render --out build/chart [--values FILE ...]   # sync, then render
    python -m deploy.helm.render --check                                 # refuse drifted copies

Without ``--check`` the originals win: every copy that differs is overwritten (and stale
dashboard copies are removed), and the changed paths are printed so they can be reviewed and
committed with the original. With ``--check`` nothing is written and the exit status is 1 if
any copy differs (what CI runs; deploy/helm/test_chart.py fails on drift as well).

Rendering uses helm-python (Helm's Go SDK): no cluster and no ``helm`` binary. Each template's
output goes to ``OUT/<template path>``; NOTES.txt included.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "chanfleet"
FILES = CHART / "files"
DASHBOARDS = REPO / "monitoring" / "dashboards"

# Copies inside the chart and the originals they must equal, byte for byte.
STATIC_COPIES: dict[str, Path] = {
    "nginx.conf.tmpl": REPO / "deploy" / "nginx" / "nginx.conf.tmpl",
    "redis.conf.tmpl": REPO / "deploy" / "sentinel" / "redis.conf.tmpl",
    "sentinel.conf.tmpl": REPO / "deploy" / "sentinel" / "sentinel.conf.tmpl",
    "alerts.yaml": REPO / "monitoring" / "alerts.yaml",
}


def copy_pairs() -> list[tuple[Path, Path]]:
    """Return (copy in the chart, original) for every shared file, dashboards included."""
    pairs = [(FILES / name, original) for name, original in STATIC_COPIES.items()]
    pairs += [
        (FILES / "dashboards" / original.name, original)
        for original in sorted(DASHBOARDS.glob("*.json"))
    ]
    return pairs


def stale_copies() -> list[Path]:
    """Return dashboard copies in the chart whose original no longer exists."""
    originals = {path.name for path in DASHBOARDS.glob("*.json")}
    return sorted(
        path for path in (FILES / "dashboards").glob("*.json") if path.name not in originals
    )


def drifted() -> list[Path]:
    """Return the chart copies that are missing, differ from their original, or are stale."""
    changed = [
        copy
        for copy, original in copy_pairs()
        if not copy.exists() or not filecmp.cmp(copy, original, shallow=False)
    ]
    return changed + stale_copies()


def sync() -> list[Path]:
    """Overwrite drifted copies with their originals, remove stale ones; return what changed."""
    changed = drifted()
    originals = dict(copy_pairs())
    for copy in changed:
        if copy in originals:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(originals[copy], copy)
        else:
            copy.unlink()
    return changed


def load_values(paths: list[Path]) -> dict[str, Any]:
    """Merge values files like `helm -f a -f b` does for top-level keys (later files win)."""
    merged: dict[str, Any] = {}

    def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    for path in paths:
        merge(merged, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return merged


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "chanfleet",
    namespace: str = "chanfleet",
) -> dict[str, str]:
    """Render the chart offline; return {template path: manifest text} (empty ones dropped)."""
    import helm_python as helm  # the native library loads only when rendering is asked for

    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=release, namespace=namespace,
                                 is_install=True)
    return {path: text for path, text in manifests.items() if text.strip()}


# Marks a folder as written by this script, so a re-render may replace it (and nothing else).
MARKER = ".chanfleet-render"


def write(manifests: dict[str, str], out: Path) -> list[Path]:
    """Write each manifest to out/<template path>, replacing an earlier render; return files."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} is not empty and was not written by this script; "
                             "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("rendered by python -m deploy.helm.render\n", encoding="utf-8")
    written = []
    for name, text in sorted(manifests.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: sync (or --check) the chart's copies, then render to --out."""
    parser = argparse.ArgumentParser(prog="python -m deploy.helm.render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder to render into (e.g. build/chart)")
    parser.add_argument("--values", type=Path, action="append", default=[],
                        help="values file; repeat to layer several")
    parser.add_argument("--release", default="chanfleet", help="release name")
    parser.add_argument("--namespace", default="chanfleet", help="release namespace")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a chart copy differs from its original")
    args = parser.parse_args(argv)

    if args.check:
        changed = drifted()
        for path in changed:
            print(f"drifted: {path.relative_to(REPO)}", file=sys.stderr)
        if changed:
            print("run: python -m deploy.helm.render --out build/chart", file=sys.stderr)
            return 1
    else:
        for path in sync():
            print(f"synced: {path.relative_to(REPO)}")
    if args.out:
        for path in write(render(load_values(args.values), release=args.release,
                                 namespace=args.namespace), args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
