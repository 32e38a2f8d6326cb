"""Generation tokens in real Redis, and the process-local cache that checks them."""

import asyncio

import pytest

from app.realtime.layer import generations
from app.realtime.layer.generations import FactsCache, bump, tokens
from app.realtime.layer.store import get_store, reset_stores


async def test_a_bump_from_sync_code_changes_the_token_every_reader_sees(redis_layer):
    """Signal handlers bump with a sync client; the async readers see the new token."""
    first = await tokens(["user:1", "room:lobby"])
    assert await tokens(["user:1", "room:lobby"]) == first  # stable while nothing changes
    await asyncio.to_thread(bump, "user:1")
    second = await tokens(["user:1", "room:lobby"])
    assert second[0] != first[0] and second[1] == first[1]


async def test_a_key_that_vanished_never_comes_back_with_an_old_token(redis_layer):
    """A key lost (expired, flushed, a failover) gets a fresh token: old entries miss."""
    cache = FactsCache()
    (token,) = await tokens(["room:lobby"])
    cache.put("lobby", token, "facts")
    assert cache.get("lobby", (await tokens(["room:lobby"]))[0]) == (True, "facts")
    store = get_store()
    await store.client.delete(store.key("gen", "room:lobby"))
    assert cache.get("lobby", (await tokens(["room:lobby"]))[0]) == (False, None)


async def test_two_processes_caches_both_miss_after_one_bump(redis_layer):
    """Two caches over one Redis, as two WebSocket processes: one change reaches both."""
    caches = [FactsCache(), FactsCache()]
    (token,) = await tokens(["user:7"])
    for cache in caches:
        cache.put(7, token, "alice")
    await asyncio.to_thread(bump, "user:7")
    (token,) = await tokens(["user:7"])
    assert [cache.get(7, token) for cache in caches] == [(False, None), (False, None)]


def test_an_entry_expires_after_the_ttl_even_if_no_bump_arrived(settings):
    """The backstop for a bump lost in a failover: HANDSHAKE_FACTS_TTL."""
    settings.HANDSHAKE_FACTS_TTL = 0.2
    cache = FactsCache()
    cache.put("k", "t", "v")
    assert cache.get("k", "t") == (True, "v")
    asyncio.run(asyncio.sleep(0.25))
    assert cache.get("k", "t") == (False, None)


def test_the_oldest_entry_goes_when_the_cache_is_full():
    """The cache is bounded."""
    cache = FactsCache(max_entries=2)
    for key in "abc":
        cache.put(key, "t", key)
    assert list(cache.entries) == ["b", "c"]


def test_a_bump_that_cannot_reach_redis_is_logged_not_raised(settings, caplog):
    """A change must commit even when Redis is down; its entries age out by the TTL."""
    settings.REDIS_CONNECTION = {"address": "redis://127.0.0.1:1/0"}
    bump("user:1")
    assert "not bumped" in caplog.text
    generations._clients.clear()


def test_without_redis_the_tokens_live_in_the_process(settings):
    """`make dev` and unit tests without Redis: one process, tokens in memory."""
    settings.REDIS_CONNECTION = None
    reset_stores()
    try:
        before = asyncio.run(tokens(["user:1"]))
        bump("user:1")
        assert asyncio.run(tokens(["user:1"])) != before
    finally:
        reset_stores()


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    generations._clients.clear()


async def test_bumps_and_reads_go_through_sentinel_to_the_same_master(sentinel_topology,
                                                                      settings):
    """Production's connection: a sync bump (a signal) and the store's read meet on the master."""
    settings.REDIS_CONNECTION = {**sentinel_topology.channel_layer_host(), "max_connections": 10}
    reset_stores()
    try:
        before = await tokens(["room:lobby"])
        await asyncio.to_thread(bump, "room:lobby")
        after = await tokens(["room:lobby"])
        assert after != before
        with sentinel_topology.node_client(sentinel_topology.master_address()) as master:
            assert master.get(f"{settings.REDIS_PREFIX}:gen:room:lobby") == after[0]
    finally:
        await get_store().client.aclose()
        reset_stores()
