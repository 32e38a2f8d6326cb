"""A minimal DNS client for checking the cluster's DNS from the host (A records over UDP)."""

import random
import socket
import struct


def query(name: str, ident: int) -> bytes:
    """Return a DNS query packet asking for the A records of name (recursion desired)."""
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")
    )
    return header + labels + b"\0" + struct.pack(">HH", 1, 1)


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += 1 + length


def a_records(packet: bytes, ident: int) -> list[str]:
    """Return the IPv4 addresses answered in a response; raise LookupError on an error rcode."""
    got, flags, questions, answers, _, _ = struct.unpack(">HHHHHH", packet[:12])
    if got != ident:
        raise LookupError("response to another query")
    if flags & 0x000F:
        raise LookupError(f"rcode {flags & 0x000F}")
    offset = 12
    for _ in range(questions):
        offset = _skip_name(packet, offset) + 4
    found = []
    for _ in range(answers):
        offset = _skip_name(packet, offset)
        kind, _, _, length = struct.unpack(">HHIH", packet[offset : offset + 10])
        offset += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(packet[offset : offset + 4]))
        offset += length
    return found


def resolve(name: str, server: str, port: int = 53, timeout: float = 2.0) -> list[str]:
    """Ask server for the A records of name and return the addresses."""
    ident = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query(name, ident), (server, port))
        packet, _ = sock.recvfrom(4096)
    return a_records(packet, ident)
