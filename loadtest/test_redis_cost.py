"""The Redis-cost tool against a real redis-server: figures for each size, growing with it."""

from loadtest.redis_cost import measure, members, table


def test_members_are_dealt_over_the_processes_inboxes():
    names = members(10, 4)
    assert len(set(names)) == 10
    assert {name.split("!")[0] for name in names} == {f"specific.proc0{p}" for p in range(4)}


def test_a_bigger_room_costs_todays_layer_more_redis_time(redis_url):
    """Today's group send reads every member in Redis: ten times the room, several times the
    script's time (the tool's purpose is to show this, and a layer that does not)."""
    small, big = (measure(redis_url, size, 2, 5) for size in (100, 2000))
    assert small["sends"] == big["sends"] == 5
    assert big["us_per_send"] > 3 * small["us_per_send"] > 0
    assert "| script | 2,000 | 2 |" in table([small, big])


def test_pubsub_fanout_costs_redis_the_same_whatever_the_room(redis_url):
    """One PUBLISH to two subscribed processes: a room twenty times bigger costs Redis no more
    than twice as much (the target of issue 31 at 50,000 against 100 members)."""
    small, big = (measure(redis_url, size, 2, 20, "pubsub") for size in (100, 2000))
    assert 0 < big["us_per_send"] < 2 * small["us_per_send"]
