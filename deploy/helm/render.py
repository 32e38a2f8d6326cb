"""Render the Helm chart into a folder for review.

    python -m deploy.helm.render --out build/chart [--values FILE ...]

Helm can read only files inside the chart, so the files the chart shares with the local
topology and monitoring (the nginx and Sentinel templates, the alert rules, the Grafana
dashboards) live in deploy/helm/chanfleet/files/ and nowhere else: deploy/nginx/render.py and
deploy/sentinel/render.py read them there, and monitoring's generators write them there.

Rendering uses helm-python (Helm's Go SDK): no cluster and no ``helm`` binary. Each template's
output goes to ``OUT/<template path>``; NOTES.txt included.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "chanfleet"
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
    """Command line: render the chart to --out."""
    parser = argparse.ArgumentParser(prog="python -m deploy.helm.render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to render into (e.g. build/chart)")
    parser.add_argument("--values", type=Path, action="append", default=[],
                        help="values file; repeat to layer several")
    parser.add_argument("--release", default="chanfleet", help="release name")
    parser.add_argument("--namespace", default="chanfleet", help="release namespace")
    args = parser.parse_args(argv)

    if args.out:
        for path in write(render(load_values(args.values), release=args.release,
                                 namespace=args.namespace), args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
