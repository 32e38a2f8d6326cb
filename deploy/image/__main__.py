"""Build images with docker or podman: `python -m deploy.image COMMAND` (see --help)."""

from __future__ import annotations

import argparse

from deploy.image import app_image, base, engine, standins, timing
from deploy.image.versions import app_tag


def main(argv: list[str] | None = None) -> int:
    """Run one command of this package and print each step's duration."""
    parser = argparse.ArgumentParser(prog="python -m deploy.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("base", help="make sure the base image is stored: present, pulled or made")
    sub.add_parser("image", help="build, smoke-test and save the chanfleet image (make image)")
    tests = sub.add_parser("test-images", help="build, check and save the test-cluster stand-ins")
    tests.add_argument("--only", action="append", choices=standins.NAMES,
                       help="this stand-in only (repeatable; default: all)")
    sub.add_parser("nginx-source", help="fetch nginx's source with cargo into build/")
    args = parser.parse_args(argv)

    if args.command == "nginx-source":
        print(standins.nginx_source())
        return 0
    chosen = engine.detect()
    print(f"engine: {chosen.name}", flush=True)
    if args.command == "base":
        print(f"{base.BASE_IMAGE}: {base.ensure(chosen)}")
    elif args.command == "image":
        app_image.build(chosen, app_tag())
    else:
        standins.build_all(chosen, args.only or list(standins.NAMES))
    print("timings:\n" + timing.summary(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
