"""The coalescer against a real Redis: one pipeline per loop turn, each caller its own replies."""

import asyncio

import pytest
from redis import asyncio as aioredis
from redis import exceptions as redis_errors

from app.realtime.layer.coalescer import Coalescer
from deploy.processes.children import free_port


@pytest.fixture
async def client(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


def counting(client) -> list:
    """Record every pipeline the client makes (each is one round trip)."""
    made = []
    original = client.pipeline

    def pipeline(**options):
        made.append(options)
        return original(**options)
    client.pipeline = pipeline
    return made


async def test_callers_of_one_turn_share_one_round_trip_and_get_their_own_replies(client):
    coalescer = Coalescer(client)
    made = counting(client)

    def writes(n):
        def build(pipe):
            pipe.set(f"k{n}", n)
            pipe.incrby(f"k{n}", 10)
            pipe.get(f"k{n}")
        return build
    replies = await asyncio.gather(*(coalescer.run(writes(n)) for n in range(50)))
    assert replies == [[True, n + 10, str(n + 10).encode()] for n in range(50)]
    assert made == [{"transaction": False}]
    # The next turn's callers get a pipeline of their own.
    assert await coalescer.run(lambda pipe: pipe.get("k3")) == [b"13"]
    assert len(made) == 2


async def test_callers_behind_a_pipeline_in_flight_go_together_when_it_returns(client):
    coalescer = Coalescer(client, stall=10)
    made = counting(client)
    slow = asyncio.ensure_future(coalescer.run(lambda pipe: pipe.blpop("nothing", 0.3)))
    await asyncio.sleep(0.05)  # the slow pipeline is in flight
    later = []
    for n in range(3):  # callers of three different turns
        later.append(asyncio.ensure_future(coalescer.run(lambda pipe, n=n: pipe.incrby("n", n))))
        await asyncio.sleep(0.01)
    assert not any(task.done() for task in later)
    assert await slow == [None]
    assert sorted(await asyncio.gather(*later)) == [[0], [1], [3]]
    assert len(made) == 2


async def test_a_stalled_pipeline_holds_the_next_one_back_for_stall_only(client):
    coalescer = Coalescer(client, stall=0.05)
    made = counting(client)
    slow = asyncio.ensure_future(coalescer.run(lambda pipe: pipe.blpop("nothing", 2)))
    await asyncio.sleep(0.01)
    assert await coalescer.run(lambda pipe: pipe.incr("n")) == [1]
    assert not slow.done()
    assert len(made) == 2
    await client.lpush("nothing", "x")
    assert await slow == [(b"nothing", b"x")]


async def test_a_command_redis_refuses_fails_its_caller_alone(client):
    coalescer = Coalescer(client)
    await client.set("text", "not a number")
    good = coalescer.run(lambda pipe: pipe.incr("counter"))
    bad = coalescer.run(lambda pipe: (pipe.set("other", 1), pipe.incr("text")))
    after = coalescer.run(lambda pipe: pipe.incr("counter"))
    results = await asyncio.gather(good, bad, after, return_exceptions=True)
    assert results[0] == [1] and results[2] == [2]
    assert isinstance(results[1], redis_errors.ResponseError)
    assert await client.get("other") == b"1"  # no transaction: its other command ran


async def test_a_caller_whose_build_raises_fails_alone(client):
    coalescer = Coalescer(client)

    def broken(pipe):
        raise ValueError("bad arguments")
    results = await asyncio.gather(coalescer.run(broken), coalescer.run(lambda p: p.incr("n")),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] == [1]


async def test_a_cancelled_caller_leaves_the_others_their_replies(client):
    coalescer = Coalescer(client)
    first = asyncio.ensure_future(coalescer.run(lambda pipe: pipe.incr("n")))
    second = asyncio.ensure_future(coalescer.run(lambda pipe: pipe.incr("n")))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == [2]  # the cancelled caller's command was sent all the same
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_connection_error_reaches_every_caller_as_its_own_exception():
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    coalescer = Coalescer(client)
    results = await asyncio.gather(*(coalescer.run(lambda pipe: pipe.get("k")) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, redis_errors.ConnectionError) for r in results)
    assert len({id(r) for r in results}) == 3
    await client.aclose()
