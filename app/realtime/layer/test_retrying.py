"""The one retry loop that store and channel layer ride a failover with."""

import itertools
import time

import pytest
from redis import exceptions as redis_errors

from app.realtime.layer.retrying import no_retry, retry_transient, sentinel_kwargs


class Flaky:
    """An operation that fails with `error` a number of times, then answers."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error = failures, error
        self.calls: list[float] = []

    async def __call__(self, value):
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.error
        return value


async def test_transient_errors_are_retried_in_short_steps_until_the_operation_answers():
    operation = Flaky(8, redis_errors.ConnectionError("master gone"))
    retried = []
    assert await retry_transient(operation, "ok", seconds=10, on_retry=retried.append) == "ok"
    assert len(operation.calls) == 9 and len(retried) == 8
    steps = [b - a for a, b in itertools.pairwise(operation.calls)]
    # 50 ms doubling to 250 ms, each +-50%: never a step of a second or more after a promotion.
    assert max(steps) < 0.25 * 1.5 + 0.05
    assert min(steps) >= 0.05 * 0.5


async def test_the_last_error_is_raised_at_the_deadline():
    operation = Flaky(10**6, redis_errors.TimeoutError("no answer"))
    started = time.monotonic()
    with pytest.raises(redis_errors.TimeoutError):
        await retry_transient(operation, None, seconds=0.6)
    assert 0.3 < time.monotonic() - started < 0.6 + 0.1


async def test_other_errors_are_not_retried():
    operation = Flaky(1, redis_errors.ResponseError("WRONGTYPE"))
    with pytest.raises(redis_errors.ResponseError):
        await retry_transient(operation, None, seconds=5)
    assert len(operation.calls) == 1


async def test_after_sleep_runs_between_attempts():
    operation = Flaky(2, redis_errors.ReadOnlyError("demoted"))
    probes = []

    async def probe():
        probes.append(len(operation.calls))

    await retry_transient(operation, None, seconds=5, after_sleep=probe)
    assert probes == [1, 2]


def test_sentinel_clients_try_once_with_short_timeouts_keeping_given_options():
    options = sentinel_kwargs({"password": "p", "socket_timeout": 0.5})
    assert options["password"] == "p" and options["socket_timeout"] == 0.5
    assert options["socket_connect_timeout"] == 1.0
    assert options["retry"].get_retries() == 0
    assert no_retry().get_retries() == 0
    # A fresh policy each time, so no two clients share one.
    assert sentinel_kwargs(None)["retry"] is not sentinel_kwargs(None)["retry"]
