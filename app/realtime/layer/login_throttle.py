"""Failed-login counters and lockouts shared by every process, in the store's Redis.

Three subjects are counted for each attempt (the policy, with its reasons, is in
docs/architecture.md "Login throttling"):

- `address`: the client address (an IPv6 client's /64), whatever user names it tries;
- `user`: one user name from one address;
- `user_everywhere`: one user name from every address together. Its lock binds only the
  addresses that have failed for that name lately, so a guesser spread over many addresses
  cannot lock the owner out of an address that has not failed.

A subject that reaches its count of failures is locked; each lock is twice as long as the one
before, up to a cap, and after a lock ends a single further failure locks it again. The counts
are forgotten `LOGIN_FAILURE_WINDOW` seconds after the last failure (or after the end of the
lock it caused), the doubling a day after the last lock. A success clears the user name's
counts (`user` at that address, and `user_everywhere`); the address keeps its failures, so
logging in to an account of one's own never buys more guesses at another.

An attempt is begun before the password is checked and settled after: attempts in flight count
against the failures a subject has left, so parallel guesses cannot overshoot the count while
their password hashes are being computed.

Redis does each step in one Lua script, on the server's clock, so every process sees the same
counts. Each script deletes before it writes, and Redis lets a script that has written finish,
so a full Redis (maxmemory reached) still counts. When Redis cannot be reached for longer than a
failover takes, or refuses a script, counting falls back to this process (`LOCAL`): logins go
on, still throttled, each process counting alone (`chanfleet_login_counted_locally`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import secrets
import time
import unicodedata
from dataclasses import dataclass

from django.conf import settings
from redis import exceptions as redis_errors

from app.realtime.layer.retrying import TRANSIENT_ERRORS, retry_transient
from app.realtime.layer.store import RedisStore, get_store
from app.realtime.ops import metrics

log = logging.getLogger(__name__)

SCOPES = ("address", "user", "user_everywhere")
# A refusal because the attempts in flight already use up the failures left: no lock, retry.
BUSY = "busy"
# An attempt still unsettled after this long stops counting: longer than any request lives
# (gunicorn's worker timeout), so a crashed process's attempts do not hold a subject forever.
FLIGHT_SECONDS = 60
# How long the doubling is remembered after a subject's last lock.
STRIKE_MEMORY_SECONDS = 24 * 3600
# Long enough to ride out a Sentinel failover with the local down-after; past that a login is
# counted in its process rather than held for the store's whole retry budget.
RETRY_SECONDS = 3.0
# This process's counters drop their expired keys once every so many attempts.
SWEEP_EVERY = 1000


@dataclass(frozen=True)
class Policy:
    """How many failures lock each subject, and for how long."""

    address_failures: int
    user_failures: int
    user_everywhere_failures: int
    window: float
    lock: float
    lock_max: float
    user_everywhere_lock_max: float

    @classmethod
    def from_settings(cls) -> Policy:
        """The policy of the LOGIN_* settings."""
        return cls(
            address_failures=settings.LOGIN_ADDRESS_FAILURES,
            user_failures=settings.LOGIN_USER_FAILURES,
            user_everywhere_failures=settings.LOGIN_USER_EVERYWHERE_FAILURES,
            window=settings.LOGIN_FAILURE_WINDOW,
            lock=settings.LOGIN_LOCK_SECONDS,
            lock_max=settings.LOGIN_LOCK_MAX_SECONDS,
            user_everywhere_lock_max=settings.LOGIN_USER_EVERYWHERE_LOCK_MAX_SECONDS,
        )

    def arguments(self) -> list[int]:
        """The script arguments after the token: times in ms, then (limit, cap) per scope."""
        return [
            _ms(FLIGHT_SECONDS), _ms(self.window), _ms(self.lock), STRIKE_MEMORY_SECONDS,
            self.address_failures, _ms(self.lock_max),
            self.user_failures, _ms(self.lock_max),
            self.user_everywhere_failures, _ms(self.user_everywhere_lock_max),
        ]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@dataclass(frozen=True)
class Refusal:
    """An attempt refused before its password was checked."""

    scope: str  # one of SCOPES, or BUSY
    retry_after: int  # whole seconds, at least 1


@dataclass(frozen=True)
class Lock:
    """A lock that a failure just started."""

    scope: str
    seconds: float


@dataclass(frozen=True)
class Attempt:
    """An attempt allowed to check its password; `settle` it once the password is checked."""

    user: str  # user_key(username)
    where: str  # address_key(address)
    token: str
    policy: Policy
    local: bool  # begun in this process's counters (no Redis, or Redis unreachable)


def address_key(address: str) -> str:
    """The part of a client address that is counted: IPv4 as is, IPv6 by its /64 network.

    One IPv6 client usually holds a whole /64, so counting single IPv6 addresses would hand
    it billions of fresh addresses to guess from.
    """
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()[:64] or "unknown"
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def user_key(username: str) -> str:
    """A fixed-length key for a user name, the same for its case and Unicode variants."""
    folded = unicodedata.normalize("NFKC", username).casefold()
    return hashlib.sha256(folded.encode()).hexdigest()[:32]


def subject_keys(prefix: str, user: str, where: str) -> tuple[str, ...]:
    """The four keys (failures, lock, strikes, in flight) of each subject, in SCOPES order."""
    bases = [f"{prefix}:a:{where}", f"{prefix}:ua:{user}:{where}", f"{prefix}:u:{user}"]
    return tuple(f"{base}:{part}" for base in bases for part in ("f", "l", "s", "q"))


# ---------------------------------------------------------------------------- Redis
# KEYS: per scope (address, user, user_everywhere) its failures, lock, strikes and in-flight
# keys. ARGV: token, flight ms, window ms, first lock ms, strike memory s, then per scope its
# limit and lock cap in ms. Times come from the server's clock: processes' clocks may differ.
_COMMON_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names = {'address', 'user', 'user_everywhere'}
local function key(i, k) return KEYS[(i - 1) * 4 + k] end
local function failures(i) return tonumber(redis.call('GET', key(i, 1)) or '0') end
local function limit(i) return tonumber(ARGV[4 + 2 * i]) end
"""

BEGIN_LUA = _COMMON_LUA + """
local wait, scope = 0, ''
for i = 1, 3 do
  local ttl = redis.call('PTTL', key(i, 2))
  -- The user name's lock from every address binds only addresses that failed for it.
  if ttl > wait and (i < 3 or failures(2) > 0) then wait, scope = ttl, names[i] end
end
if wait > 0 then return {scope, wait} end
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', key(i, 4), '-inf', now)
  if failures(i) + redis.call('ZCARD', key(i, 4)) >= limit(i) then return {'busy', 1000} end
end
for i = 1, 2 do
  redis.call('ZADD', key(i, 4), now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', key(i, 4), ARGV[2])
end
return {'', 0}
"""

SETTLE_LUA = _COMMON_LUA + """
for i = 1, 2 do redis.call('ZREM', key(i, 4), ARGV[1]) end
if ARGV[12] == 'ok' then
  redis.call('DEL', key(2, 1), key(2, 2), key(2, 3), key(3, 1), key(3, 2), key(3, 3))
end
if ARGV[12] ~= 'fail' then return {} end
local locked = {}
for i = 1, 3 do
  local count = redis.call('INCR', key(i, 1))
  if count >= limit(i) then
    local strikes = redis.call('INCR', key(i, 3))
    redis.call('EXPIRE', key(i, 3), ARGV[5])
    local ms = math.floor(math.min(tonumber(ARGV[4]) * 2 ^ math.min(strikes - 1, 40),
                                   tonumber(ARGV[5 + 2 * i])))
    redis.call('SET', key(i, 2), strikes, 'PX', ms)
    -- One more failure after the lock ends locks again, until a quiet window has passed.
    redis.call('SET', key(i, 1), limit(i) - 1, 'PX', ms + tonumber(ARGV[3]))
    table.insert(locked, names[i])
    table.insert(locked, ms)
  else
    redis.call('PEXPIRE', key(i, 1), ARGV[3])
  end
end
return locked
"""


class RedisThrottle:
    """The counters in the store's Redis, shared by every process."""

    def __init__(self, store: RedisStore):
        self.client = store.client
        self.prefix = store.key("login")

    async def begin(self, user: str, where: str, token: str, policy: Policy) -> Refusal | None:
        """Refuse a locked attempt, or count it in flight."""
        keys = subject_keys(self.prefix, user, where)
        scope, wait = await self._run(BEGIN_LUA, keys, [token, *policy.arguments()])
        if scope:
            return Refusal(_text(scope), max(1, math.ceil(int(wait) / 1000)))
        return None

    async def settle(self, attempt: Attempt, outcome: str) -> list[Lock]:
        """Record an attempt's outcome (`ok`, `fail` or `void`); return the locks it started."""
        keys = subject_keys(self.prefix, attempt.user, attempt.where)
        reply = await self._run(SETTLE_LUA, keys,
                                [attempt.token, *attempt.policy.arguments(), outcome])
        return [Lock(_text(reply[i]), int(reply[i + 1]) / 1000) for i in range(0, len(reply), 2)]

    async def _run(self, script: str, keys: tuple[str, ...], args: list) -> list:
        return await retry_transient(self.client.eval, script, len(keys), *keys, *args,
                                     seconds=RETRY_SECONDS)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- this process
class MemoryThrottle:
    """The same counters kept in this process: `make dev`, unit tests, and Redis outages.

    It follows the Lua scripts above step by step; the tests run one suite against both.
    """

    def __init__(self):
        self.values: dict[str, tuple[object, float]] = {}  # key -> (value, expiry in ms)
        self.begun = 0

    async def begin(self, user: str, where: str, token: str, policy: Policy) -> Refusal | None:
        """Refuse a locked attempt, or count it in flight."""
        keys = subject_keys("local", user, where)
        now = _now_ms()
        self.begun += 1
        if self.begun % SWEEP_EVERY == 0:
            # Keys expire only when read: a guesser trying many names must not fill memory.
            for key in [k for k, (_, expiry) in self.values.items() if expiry <= now]:
                del self.values[key]
        args = policy.arguments()
        wait, scope = 0.0, ""
        for i, name in enumerate(SCOPES):
            left = self._ttl(keys[4 * i + 1], now)
            if left > wait and (i < 2 or self._failures(keys, 1, now) > 0):
                wait, scope = left, name
        if wait > 0:
            return Refusal(scope, max(1, math.ceil(wait / 1000)))
        for i in range(2):
            flight = self._flight(keys, i, now)
            if self._failures(keys, i, now) + len(flight) >= args[4 + 2 * i]:
                return Refusal(BUSY, 1)
        for i in range(2):
            flight = self._flight(keys, i, now)
            flight[token] = now + args[0]
            self.values[keys[4 * i + 3]] = (flight, now + args[0])
        return None

    async def settle(self, attempt: Attempt, outcome: str) -> list[Lock]:
        """Record an attempt's outcome (`ok`, `fail` or `void`); return the locks it started."""
        keys = subject_keys("local", attempt.user, attempt.where)
        now, args = _now_ms(), attempt.policy.arguments()
        for i in range(2):
            self._flight(keys, i, now).pop(attempt.token, None)
        if outcome == "ok":
            for key in keys[4:7] + keys[8:11]:
                self.values.pop(key, None)
        if outcome != "fail":
            return []
        locked = []
        for i, name in enumerate(SCOPES):
            limit, cap = args[4 + 2 * i], args[5 + 2 * i]
            count = self._failures(keys, i, now) + 1
            if count >= limit:
                strikes = self._get(keys[4 * i + 2], now, 0) + 1
                self.values[keys[4 * i + 2]] = (strikes, now + args[3] * 1000)
                ms = math.floor(min(args[2] * 2 ** min(strikes - 1, 40), cap))
                self.values[keys[4 * i + 1]] = (strikes, now + ms)
                self.values[keys[4 * i]] = (limit - 1, now + ms + args[1])
                locked.append(Lock(name, ms / 1000))
            else:
                self.values[keys[4 * i]] = (count, now + args[1])
        return locked

    def _get(self, key: str, now: float, default):
        value, expiry = self.values.get(key, (default, math.inf))
        if expiry <= now:
            del self.values[key]
            return default
        return value

    def _ttl(self, key: str, now: float) -> float:
        if self._get(key, now, None) is None:
            return 0.0
        return self.values[key][1] - now

    def _failures(self, keys: tuple[str, ...], i: int, now: float) -> int:
        return self._get(keys[4 * i], now, 0)

    def _flight(self, keys: tuple[str, ...], i: int, now: float) -> dict[str, float]:
        flight = self._get(keys[4 * i + 3], now, None) or {}
        for token in [t for t, until in flight.items() if until <= now]:
            del flight[token]
        return flight

    def clear(self) -> None:
        """Forget every count (tests start each case afresh)."""
        self.values.clear()


def _now_ms() -> float:
    return time.time() * 1000


# Counts of this process: the throttle without Redis, and the fallback while Redis is away.
LOCAL = MemoryThrottle()
# Past a failover's retries, or any other error from Redis: a login is still answered.
UNREACHABLE = (*TRANSIENT_ERRORS, redis_errors.RedisError)


def get_throttle() -> RedisThrottle | MemoryThrottle:
    """Return the shared Redis counters when Redis is configured, else this process's."""
    store = get_store()
    return RedisThrottle(store) if isinstance(store, RedisStore) else LOCAL


async def begin(username: str, address: str) -> Attempt | Refusal:
    """Begin a login attempt: a Refusal when a subject is locked, else an Attempt to settle."""
    policy = Policy.from_settings()
    user, where, token = user_key(username), address_key(address), secrets.token_hex(8)
    throttle = get_throttle()
    started = None
    if throttle is not LOCAL:
        try:
            refusal = await throttle.begin(user, where, token, policy)
        except UNREACHABLE as error:
            _counting_locally(error)
        else:
            started = refusal or Attempt(user, where, token, policy, local=False)
    if started is None:
        refusal = await LOCAL.begin(user, where, token, policy)
        started = refusal or Attempt(user, where, token, policy, local=True)
    if isinstance(started, Refusal):
        metrics.LOGIN_REFUSALS.labels(started.scope).inc()
    return started


async def settle(attempt: Attempt, outcome: str) -> list[Lock]:
    """Settle an attempt as `ok` (password right), `fail` (wrong) or `void` (not checked)."""
    metrics.LOGIN_ATTEMPTS.labels(outcome).inc()
    locks = None
    if not attempt.local:
        try:
            locks = await get_throttle().settle(attempt, outcome)
        except UNREACHABLE as error:
            _counting_locally(error)
    if locks is None:
        locks = await LOCAL.settle(attempt, outcome)
    for lock in locks:
        metrics.LOGIN_LOCKS.labels(lock.scope).inc()
    return locks


def _counting_locally(error: Exception) -> None:
    metrics.LOGIN_COUNTED_LOCALLY.inc()
    log.warning("login throttle: Redis unreachable (%r); counting in this process", error)
