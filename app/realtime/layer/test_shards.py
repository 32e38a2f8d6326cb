"""Rendezvous hashing of groups and inboxes over shards (pure logic)."""

import collections

import pytest

from app.realtime.layer.shards import Ring, shard_name

KEYS = [f"chat.room-{i}" for i in range(3000)]


def placement(ring: Ring) -> dict[str, str]:
    return {key: ring.names[ring.index(key)] for key in KEYS}


def test_keys_spread_evenly_over_the_shards():
    counts = collections.Counter(placement(Ring(["a", "b", "c"])).values())
    assert len(counts) == 3
    assert min(counts.values()) > len(KEYS) / 3 * 0.85


def test_adding_a_shard_moves_only_the_keys_it_takes():
    before = placement(Ring(["a", "b"]))
    after = placement(Ring(["a", "b", "c"]))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == b"c" for key in moved)
    assert 0.25 < len(moved) / len(KEYS) < 0.42  # about a third


def test_removing_a_shard_moves_only_its_own_keys():
    before = placement(Ring(["a", "b", "c"]))
    after = placement(Ring(["a", "c"]))
    assert all(before[key] == b"b" for key in KEYS if before[key] != after[key])


def test_the_order_of_the_list_does_not_matter():
    assert placement(Ring(["a", "b", "c"])) == placement(Ring(["c", "a", "b"]))


def test_one_shard_takes_everything_and_names_must_differ():
    assert {Ring(["only"]).index(key) for key in KEYS} == {0}
    with pytest.raises(ValueError):
        Ring(["a", "a"])


def test_a_shard_is_named_by_its_sentinel_master_or_its_address():
    assert shard_name({"sentinels": [("h", 1)], "master_name": "chanfleet-2"}) == \
        "sentinel:chanfleet-2"
    assert shard_name({"address": "redis://10.0.0.5:6379/0"}) == "redis://10.0.0.5:6379/0"
    # Names go to logs and metrics: never the password.
    assert shard_name({"address": "rediss://:s3cret@cache:6380/1"}) == "rediss://cache:6380/1"
