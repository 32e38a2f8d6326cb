"""Network namespaces for partition drills: hosts on a bridge, links cut and healed.

``Network(prefix)`` makes a namespace holding only a bridge, then one namespace per host, each
joined to the bridge by a veth pair (``eth0`` inside the host, ``<prefix>v<n>`` on the bridge)
with an address of the network's subnet. ``cut(host)`` sets the bridge end of the host's veth
down: the host keeps its address and reaches itself, nobody else reaches it, and no packet is
refused (a partition looks like silence, not like a closed port). ``heal(host)`` sets it up.

Nothing here routes to the outside: the bridge lives in a namespace of its own, with no link
to the root namespace. Programs run inside a host with ``host.argv(...)`` (``ip netns exec``);
Python code runs inside one on a thread that entered it (``host.call``, ``NamespaceLoop``),
since a network namespace belongs to a thread and a socket keeps the namespace it was made in.
``remove()`` deletes exactly the namespaces this object made (their veth ends go with them).
Root only; ``unavailable()`` says why it cannot run here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ipaddress
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
# Interface names are at most 15 bytes (IFNAMSIZ less the NUL).
IFNAME_MAX = 15


class NetnsError(RuntimeError):
    """An `ip` command failed; the message holds its command line and output."""


def ip_tool() -> str | None:
    """Return the path of iproute2's `ip`, or None when it is not installed."""
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...`; raise NetnsError with its output if it fails and check is set."""
    tool = ip_tool()
    if tool is None:
        raise NetnsError("iproute2's ip is not installed (Debian: apt-get install iproute2)")
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def namespaces() -> set[str]:
    """Return the names of the named network namespaces (`ip netns list`)."""
    listed = ip("netns", "list").stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def unavailable(probe: str = "cfpart-probe") -> str | None:
    """Return why namespaces cannot be made here (not root, no `ip`, no netns), else None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if ip_tool() is None:
        return "iproute2's ip is not installed"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    ip("netns", "delete", probe, check=False)
    return None


def enter(namespace: str) -> None:
    """Move the calling thread into a named network namespace (sockets it makes live there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
    finally:
        os.close(fd)


class Host:
    """One namespace on the network: its name, address and the bridge end of its link."""

    def __init__(self, name: str, namespace: str, address: str, link: str) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address
        self.link = link
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.namespace}, {self.address})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """Return a command line that runs argv inside this host's namespace."""
        tool = ip_tool()
        if tool is None:
            raise NetnsError("iproute2's ip is not installed")
        return [tool, "netns", "exec", self.namespace, *argv]

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and return its completed process (not checked)."""
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """Return threads that entered this namespace (made on first use, kept until close)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix=self.namespace,
                initializer=enter, initargs=(self.namespace,))
        return self._executor

    def call(self, function: Callable[..., T], *args: Any, timeout: float | None = 60) -> T:
        """Run function(*args) on a thread inside the namespace and return its result."""
        return self.executor().submit(function, *args).result(timeout)

    def close(self) -> None:
        """Stop this host's threads (their sockets were the caller's to close)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class NamespaceLoop:
    """An asyncio event loop on a thread inside a namespace, its default executor there too.

    Coroutines submitted from other threads run on it, so every socket they open (and every
    ``asyncio.to_thread`` call they make) is inside the namespace.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"loop-{host.namespace}",
                                        daemon=True)

    def _run(self) -> None:
        try:
            enter(self.host.namespace)
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self.loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
            max_workers=8, initializer=enter, initargs=(self.host.namespace,)))
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def start(self) -> NamespaceLoop:
        """Start the loop's thread; raise if it could not enter the namespace."""
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the loop and return a future of its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return self.submit(coroutine).result(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Cancel what still runs on the loop, stop it and join its thread."""
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


class Network:
    """A bridge in a namespace of its own and hosts joined to it, all named after prefix."""

    def __init__(self, prefix: str, subnet: str = "10.231.0.0/24") -> None:
        if len(f"{prefix}v99") > IFNAME_MAX or len(f"{prefix}br") > IFNAME_MAX:
            raise ValueError(f"prefix {prefix!r} is too long for interface names")
        self.prefix = prefix
        self.subnet = ipaddress.ip_network(subnet)
        self.namespace = f"{prefix}-net"
        self.bridge = f"{prefix}br"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def create(self) -> Network:
        """Make the bridge's namespace and the bridge (after removing a crashed run's)."""
        self._delete_if_present(self.namespace)
        ip("netns", "add", self.namespace)
        self._made.append(self.namespace)
        ip("-n", self.namespace, "link", "set", "lo", "up")
        ip("-n", self.namespace, "link", "add", self.bridge, "type", "bridge")
        ip("-n", self.namespace, "link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str, host_number: int) -> Host:
        """Make namespace <prefix>-<name>, linked to the bridge, at the subnet's host_number."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        address = str(self.subnet.network_address + host_number)
        if ipaddress.ip_address(address) not in self.subnet or host_number < 1:
            raise ValueError(f"host number {host_number} is outside {self.subnet}")
        namespace = f"{self.prefix}-{name}"
        link = f"{self.prefix}v{len(self.hosts) + 1}"
        self._delete_if_present(namespace)
        ip("netns", "add", namespace)
        self._made.append(namespace)
        # Both ends are made where they live: nothing appears in the root namespace.
        ip("-n", self.namespace, "link", "add", link, "type", "veth",
           "peer", "name", "eth0", "netns", namespace)
        ip("-n", self.namespace, "link", "set", link, "master", self.bridge, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        host = self.hosts[name] = Host(name, namespace, address, link)
        return host

    def cut(self, host: Host) -> None:
        """Cut a host off the bridge: its packets go nowhere, and nobody else's reach it."""
        ip("-n", self.namespace, "link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        """Put a cut host back on the bridge."""
        ip("-n", self.namespace, "link", "set", host.link, "up")

    def is_cut(self, host: Host) -> bool:
        """Return whether the bridge end of the host's link is down."""
        shown = ip("-n", self.namespace, "-o", "link", "show", host.link).stdout
        return "state DOWN" in shown or ",UP" not in shown.split(">")[0]

    def remove(self) -> None:
        """Delete every namespace this network made; safe to call twice or after a failure."""
        for host in self.hosts.values():
            host.close()
        errors = []
        for namespace in reversed(self._made):
            result = ip("netns", "delete", namespace, check=False)
            if result.returncode != 0 and namespace in namespaces():
                errors.append(f"{namespace}: {result.stderr.strip()}")
        self._made.clear()
        self.hosts.clear()
        if errors:
            raise NetnsError("could not delete namespaces: " + "; ".join(errors))

    @staticmethod
    def _delete_if_present(namespace: str) -> None:
        if namespace in namespaces():
            ip("netns", "delete", namespace)

    def __enter__(self) -> Network:
        """Create on entering the context."""
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        """Remove every namespace on leaving the context."""
        self.remove()
