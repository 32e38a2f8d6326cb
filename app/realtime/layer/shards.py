"""Which Redis shard holds a group or a process's inbox: rendezvous hashing over shard names.

channels_redis maps a key to a host by cutting CRC32's range into as many slices as there are
hosts: adding a third shard to two moves about half of all keys, and a host's position in the
list decides its keys. Here every shard is scored for the key by a hash of (shard name, key)
and the highest score wins (rendezvous, or highest-random-weight, hashing): adding a shard
moves only the keys it now wins, about 1/N of them, and removing one moves only its own, to
wherever each scores next. Keys are identified by shard name (the Sentinel master name, or the
server's address), so reordering the list moves nothing.

A moved group or inbox is empty on its new shard until the processes using it run with the
new list: while a rollout mixes old and new lists, a broadcast may go where some members do
not read. Stored room events reach them by gap fill; ephemeral frames of that window do not
(docs/channel-layer.md, "Shards").
"""

from __future__ import annotations

import hashlib
import urllib.parse


def shard_name(host: dict) -> str:
    """The name a shard is known by (in logs and metrics too): its Sentinel master name, else
    its address without credentials."""
    if host.get("master_name"):
        return f"sentinel:{host['master_name']}"
    address = host.get("address")
    if address is None:
        return f"redis://{host.get('host', 'localhost')}:{host.get('port', 6379)}"
    parts = urllib.parse.urlsplit(str(address))
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _score(name: bytes, key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, key=name).digest(), "big")


class Ring:
    """Maps keys to shard indexes by rendezvous hashing; remembers recent answers."""

    def __init__(self, names: list[str], remember: int = 65_536):
        if len(set(names)) != len(names):
            raise ValueError(f"shard names must be distinct: {names}")
        self.names = [name.encode()[:64] for name in names]  # blake2b keys are ≤ 64 bytes
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"shard names must differ in their first 64 bytes: {names}")
        self.remember = remember
        self.known: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.names)

    def index(self, key: str | bytes) -> int:
        """The index of the shard that holds `key`."""
        if len(self.names) == 1:
            return 0
        found = self.known.get(key)
        if found is not None:
            return found
        raw = key.encode() if isinstance(key, str) else key
        scores = [_score(name, raw) for name in self.names]
        found = scores.index(max(scores))
        if len(self.known) >= self.remember:
            self.known.clear()  # a bound, not a policy: recomputing is cheap
        self.known[key] = found
        return found
