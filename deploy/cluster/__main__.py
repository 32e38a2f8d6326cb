"""The command line: python -m deploy.cluster up|down|status|build|load-image ARCHIVE."""

import argparse
import sys
from pathlib import Path

from . import build, images, lifecycle


def main(argv: list[str] | None = None) -> int:
    """Run one cluster command and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m deploy.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="install, build and start the cluster; wait until it is ready")
    commands.add_parser("down", help="stop everything and remove var/cluster")
    commands.add_parser("status", help="list the components and the node")
    commands.add_parser("build", help="only build the binaries into build/cluster/bin")
    load = commands.add_parser("load-image", help="import a docker-archive or OCI tar")
    load.add_argument("archive", type=Path)
    load.add_argument("--base-name", help="repository for an OCI archive that names only a tag")
    args = parser.parse_args(argv)

    if args.command == "up":
        timings = lifecycle.up()
        if timings:
            print("timings: " + ", ".join(f"{name} {s:.1f} s" for name, s in timings.items()))
    elif args.command == "down":
        lifecycle.down()
    elif args.command == "status":
        print(lifecycle.status())
    elif args.command == "build":
        build.build_all()
    elif args.command == "load-image":
        if not lifecycle.is_up():
            print("the cluster is not up (make cluster-up)", file=sys.stderr)
            return 1
        print(images.load(args.archive, args.base_name), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
