"""The login throttle's policy, run against real Redis and against this process's counters."""

import asyncio

import pytest

from app.realtime.layer import login_throttle
from app.realtime.layer.login_throttle import (
    BUSY,
    LOCAL,
    Attempt,
    Lock,
    Refusal,
    address_key,
    begin,
    settle,
    user_key,
)
from app.realtime.layer.store import reset_stores
from app.realtime.ops import metrics

# Small counts and short locks, so that each behaviour shows within a test.
POLICY = {
    "LOGIN_ADDRESS_FAILURES": 6,
    "LOGIN_USER_FAILURES": 3,
    "LOGIN_USER_EVERYWHERE_FAILURES": 5,
    "LOGIN_FAILURE_WINDOW": 30,
    "LOGIN_LOCK_SECONDS": 30,
    "LOGIN_LOCK_MAX_SECONDS": 120,
    "LOGIN_USER_EVERYWHERE_LOCK_MAX_SECONDS": 60,
}


@pytest.fixture(params=["redis", "memory"])
def counters(request, settings):
    """The same suite against the shared Redis counters and this process's fallback."""
    for name, value in POLICY.items():
        setattr(settings, name, value)
    if request.param == "redis":
        request.getfixturevalue("redis_layer")
    else:
        settings.REDIS_CONNECTION = None
        reset_stores()
    LOCAL.clear()
    yield request.param
    LOCAL.clear()


async def attempt(username: str, address: str, password_right: bool = False):
    """One whole attempt: the Refusal, or the locks its outcome started."""
    started = await begin(username, address)
    if isinstance(started, Refusal):
        return started
    return await settle(started, "ok" if password_right else "fail")


async def fail(username: str, address: str, times: int) -> list:
    """Fail `times` attempts; return the last answer."""
    answer = None
    for _ in range(times):
        answer = await attempt(username, address)
        assert not isinstance(answer, Refusal), answer
    return answer


async def test_a_user_name_is_locked_at_one_address_after_its_count(counters):
    """The third failure of alice from one address locks her there: the fourth is refused."""
    assert await fail("alice", "203.0.113.1", 2) == []
    assert await fail("alice", "203.0.113.1", 1) == [Lock("user", 30)]
    refusal = await begin("alice", "203.0.113.1")
    assert isinstance(refusal, Refusal) and refusal.scope == "user"
    assert 29 <= refusal.retry_after <= 30


async def test_the_right_password_is_refused_too_while_locked(counters):
    """A lock refuses before the password is checked, so guessing right changes nothing."""
    await fail("alice", "203.0.113.1", 3)
    assert isinstance(await attempt("alice", "203.0.113.1", password_right=True), Refusal)


async def test_a_user_lock_leaves_other_addresses_alone(counters):
    """alice locked at the guesser's address still logs in from her own."""
    await fail("alice", "203.0.113.1", 3)
    assert isinstance(await begin("alice", "198.51.100.7"), Attempt)
    assert isinstance(await begin("bob", "203.0.113.1"), Attempt)


async def test_a_success_clears_the_user_names_count(counters):
    """Two failures, a success, two failures: never three in a row, never locked."""
    await fail("alice", "203.0.113.1", 2)
    assert await attempt("alice", "203.0.113.1", password_right=True) == []
    assert await fail("alice", "203.0.113.1", 2) == []
    assert isinstance(await begin("alice", "203.0.113.1"), Attempt)


async def test_the_owners_success_elsewhere_does_not_unlock_the_guesser(counters):
    """alice logging in from home leaves the guesser's address locked for her name."""
    await fail("alice", "203.0.113.1", 3)
    assert await attempt("alice", "198.51.100.7", password_right=True) == []
    assert isinstance(await begin("alice", "203.0.113.1"), Refusal)


async def test_an_address_is_locked_for_every_user_name(counters):
    """Six failures spread over six names lock the address for a seventh name too."""
    for n in range(5):
        await fail(f"user{n}", "203.0.113.1", 1)
    assert await fail("user5", "203.0.113.1", 1) == [Lock("address", 30)]
    refusal = await begin("someone-else", "203.0.113.1")
    assert isinstance(refusal, Refusal) and refusal.scope == "address"


async def test_a_success_does_not_clear_the_addresses_count(counters):
    """Logging in to one's own account buys no more guesses at other accounts."""
    for n in range(5):
        await fail(f"user{n}", "203.0.113.1", 1)
    await attempt("mallory", "203.0.113.1", password_right=True)
    assert await fail("user5", "203.0.113.1", 1) == [Lock("address", 30)]


async def test_guesses_from_many_addresses_lock_only_those_addresses(counters):
    """Five addresses failing once each lock alice everywhere they failed, nowhere else."""
    answers = [await fail("alice", f"203.0.113.{n}", 1) for n in range(1, 6)]
    assert answers[-1] == [Lock("user_everywhere", 30)]
    refusal = await begin("alice", "203.0.113.1")
    assert isinstance(refusal, Refusal) and refusal.scope == "user_everywhere"
    assert isinstance(await begin("alice", "198.51.100.7"), Attempt)


async def test_each_lock_is_twice_the_last_up_to_the_cap(counters, settings):
    """After a lock ends, one more failure locks again for twice as long, capped."""
    settings.LOGIN_LOCK_SECONDS = 0.2
    settings.LOGIN_LOCK_MAX_SECONDS = 0.5
    settings.LOGIN_ADDRESS_FAILURES = settings.LOGIN_USER_EVERYWHERE_FAILURES = 100
    locks = [await fail("alice", "203.0.113.1", 3)]
    for _ in range(3):
        await asyncio.sleep(locks[-1][0].seconds + 0.05)
        locks.append(await fail("alice", "203.0.113.1", 1))
    assert [lock.seconds for [lock] in locks] == [0.2, 0.4, 0.5, 0.5]


async def test_counts_are_forgotten_after_a_quiet_window(counters, settings):
    """Failures further apart than LOGIN_FAILURE_WINDOW never add up to a lock."""
    settings.LOGIN_FAILURE_WINDOW = 0.3
    await fail("alice", "203.0.113.1", 2)
    await asyncio.sleep(0.4)
    assert await fail("alice", "203.0.113.1", 2) == []


async def test_attempts_in_flight_count_against_the_failures_left(counters):
    """Three unsettled attempts use up alice's three: a fourth waits, without a lock."""
    running = [await begin("alice", "203.0.113.1") for _ in range(3)]
    assert all(isinstance(a, Attempt) for a in running)
    assert await begin("alice", "203.0.113.1") == Refusal(BUSY, 1)
    assert await settle(running[0], "ok") == []
    assert isinstance(await begin("alice", "203.0.113.1"), Attempt)


async def test_an_attempt_not_checked_counts_nothing(counters):
    """`void` (the password check itself failed) frees the slot and counts no failure."""
    for _ in range(5):
        started = await begin("alice", "203.0.113.1")
        assert await settle(started, "void") == []
    assert await fail("alice", "203.0.113.1", 2) == []


async def test_user_names_count_alike_whatever_their_case(counters):
    """ALICE and alice are one user name to the throttle."""
    await fail("ALICE", "203.0.113.1", 2)
    assert await fail("alice", "203.0.113.1", 1) == [Lock("user", 30)]


async def test_an_unreachable_redis_falls_back_to_this_process(settings, monkeypatch):
    """With Redis gone past a failover's length, logins are still counted, here."""
    for name, value in POLICY.items():
        setattr(settings, name, value)
    settings.REDIS_CONNECTION = {"address": "redis://127.0.0.1:1/0"}
    monkeypatch.setattr(login_throttle, "RETRY_SECONDS", 0.2)
    reset_stores()
    LOCAL.clear()
    try:
        started = await begin("alice", "203.0.113.1")
        assert isinstance(started, Attempt) and started.local
        await settle(started, "fail")
        await fail("alice", "203.0.113.1", 2)
        assert isinstance(await begin("alice", "203.0.113.1"), Refusal)
    finally:
        reset_stores()
        LOCAL.clear()


async def test_outcomes_refusals_and_locks_are_counted_for_prometheus(counters):
    """Each settled attempt, refusal and lock shows in this process's metrics."""
    def read(metric, label):
        return metric.labels(label)._value.get()

    before = (read(metrics.LOGIN_ATTEMPTS, "fail"), read(metrics.LOGIN_ATTEMPTS, "ok"),
              read(metrics.LOGIN_LOCKS, "user"), read(metrics.LOGIN_REFUSALS, "user"))
    await attempt("carol", "203.0.113.2", password_right=True)
    await fail("carol", "203.0.113.2", 3)
    assert isinstance(await attempt("carol", "203.0.113.2"), Refusal)
    after = (read(metrics.LOGIN_ATTEMPTS, "fail"), read(metrics.LOGIN_ATTEMPTS, "ok"),
             read(metrics.LOGIN_LOCKS, "user"), read(metrics.LOGIN_REFUSALS, "user"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 1, 1, 1]


def test_ipv6_clients_are_counted_by_their_64():
    """Two addresses of one IPv6 /64 are one client; a v4-mapped address is its IPv4."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_key("203.0.113.9") == "203.0.113.9"


def test_user_keys_are_short_whatever_the_name():
    """A megabyte of user name makes a key as short as any other."""
    assert len(user_key("x" * 1_000_000)) == len(user_key("alice")) == 32
