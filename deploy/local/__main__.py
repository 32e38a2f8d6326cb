"""`python -m deploy.local {up,down,status}`: the commands behind make run, stop and status."""

import argparse
import os
import sys

from deploy.local.topology import Topology


def main(argv=None) -> int:
    """Run one command against the default local topology (state in var/run)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    # SHARDS=N: N Redis masters (each with a replica, the same sentinels) for the channel layer.
    topology = Topology(shards=int(os.environ.get("SHARDS") or 1))
    if args.command == "up":
        topology.up()
        print(f"""
chanfleet is running: {topology.url}/
  log in as alice / bob (or admin, staff) with password "chanfleet"
  WebSocket:   {topology.ws_url}/ws/chat/lobby/
  processes:   make status      logs: var/run/logs/      stop: make stop""")
        if topology.redis.shards > 1:
            print(f"  Redis:       {topology.redis.shards} channel layer shards, "
                  + ", ".join(f"{name} on :{port}" for name, port, _ in topology.redis.masters))
        if topology.monitoring:
            print(f"  Prometheus:  {topology.prometheus_url}/")
    elif args.command == "down":
        topology.down()
    else:
        if not topology.running():
            print("not running (make run starts it)")
            return 3
        print(topology.ctl("status"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
