"""The namespace helper of the partition drill: hosts on a bridge, cut and healed (root only)."""

import asyncio
import socket
import threading

import pytest

from deploy.processes import netns

PREFIX = "cfpartu"
SUBNET = "10.231.1.0/24"


@pytest.fixture(scope="module")
def network():
    """Two hosts, a and b, on a bridge of their own; every namespace deleted afterwards."""
    reason = netns.unavailable(f"{PREFIX}-probe")
    if reason is not None:
        pytest.skip(reason)
    net = netns.Network(PREFIX, SUBNET)
    try:
        net.create()
        net.add_host("a", 1)
        net.add_host("b", 2)
        yield net
    finally:
        net.remove()


def serve_once(host: netns.Host) -> tuple[int, threading.Thread]:
    """Listen on the host's address (a free port); answer every connection with b"hi"."""
    listener = host.call(socket.create_server, (host.address, 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            listener.settimeout(15)
            while True:
                try:
                    peer, _ = listener.accept()
                except OSError:
                    return
                with peer:
                    peer.sendall(b"hi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def fetch(address: str, port: int, timeout: float = 1.0) -> bytes | str:
    """What a server sends first, or the name of the error that stopped the connection."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            return conn.recv(2)
    except OSError as error:
        return type(error).__name__


def test_a_long_prefix_is_refused_before_anything_is_made():
    with pytest.raises(ValueError):
        netns.Network("cfpart-much-too-long")


def test_hosts_reach_each_other_and_not_the_root_namespace(network):
    a, b = network.hosts["a"], network.hosts["b"]
    port, _ = serve_once(a)
    assert b.call(fetch, a.address, port) == b"hi"
    # Nothing of the network is in the root namespace: no interface, no address of the subnet.
    assert PREFIX not in netns.ip("-o", "link", "show").stdout
    assert "10.231.1." not in netns.ip("-o", "-4", "addr", "show").stdout


def test_a_cut_host_is_silent_to_others_but_reaches_itself_until_healed(network):
    a, b = network.hosts["a"], network.hosts["b"]
    port, _ = serve_once(a)
    network.cut(a)
    try:
        assert network.is_cut(a)
        # A partition drops packets: the connection times out, it is not refused.
        assert b.call(fetch, a.address, port) == "TimeoutError"
        assert a.call(fetch, a.address, port) == b"hi"
    finally:
        network.heal(a)
    assert not network.is_cut(a)
    assert b.call(fetch, a.address, port, 5.0) == b"hi"


def test_commands_run_inside_the_host(network):
    b = network.hosts["b"]
    shown = b.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert shown.returncode == 0, shown.stderr
    assert f"{b.address}/24" in shown.stdout


def test_a_namespace_loop_opens_its_sockets_and_threads_inside(network):
    a, b = network.hosts["a"], network.hosts["b"]
    port, _ = serve_once(a)
    loop = netns.NamespaceLoop(b).start()
    try:
        async def read() -> tuple[bytes, bytes | str]:
            reader, writer = await asyncio.open_connection(a.address, port)
            first = await reader.read(2)
            writer.close()
            return first, await asyncio.to_thread(fetch, a.address, port)

        assert loop.run(read(), timeout=10) == (b"hi", b"hi")
    finally:
        loop.stop()


def test_remove_deletes_every_namespace_it_made():
    reason = netns.unavailable(f"{PREFIX}-probe")
    if reason is not None:
        pytest.skip(reason)
    net = netns.Network(f"{PREFIX}r", "10.231.2.0/24")
    with net:
        net.add_host("x", 1)
        assert {f"{PREFIX}r-net", f"{PREFIX}r-x"} <= netns.namespaces()
    assert not {f"{PREFIX}r-net", f"{PREFIX}r-x"} & netns.namespaces()
    net.remove()  # twice is harmless
