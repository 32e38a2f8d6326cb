"""The ladder's rungs answer a join as the chat does, and its figures are what it measured."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from app.chat.conftest import session_for

from . import climb, rungs

HEADERS = [(b"host", b"localhost"), (b"origin", b"http://localhost")]


def test_the_join_ends_as_the_chat_ends_it():
    """A `?last_seq=` handshake ends with `resume_end` at that position, a fresh one with
    `history_end`: the frames the ladder's client waits for on every rung."""
    assert rungs.end_frame(b"last_seq=7") == {"type": "resume_end", "seq": 7, "replayed": 0}
    assert rungs.end_frame(b"")["type"] == "history_end"


async def test_the_bare_rung_accepts_and_ends_the_join():
    comm = WebsocketCommunicator(rungs.websocket_app("bare"), "/ws/chat/x/?last_seq=3",
                                 headers=HEADERS)
    assert (await comm.connect())[0]
    assert json.loads(await comm.receive_from())["type"] == "resume_end"
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_consumer_rung_runs_the_consumer_for_a_signed_in_user():
    """Behind WebSocketAuth, so an anonymous handshake never reaches it; a signed-in one is
    accepted and ends its join, on the chat's route."""
    user = await database_sync_to_async(get_user_model().objects.create_user)("ada", password="pw")
    cookie = await session_for(user)
    comm = WebsocketCommunicator(rungs.websocket_app("consumer"), "/ws/chat/room/",
                                 headers=[*HEADERS, (b"cookie", f"sessionid={cookie}".encode())])
    assert (await comm.connect())[0]
    assert json.loads(await comm.receive_from()) == {"type": "history_end", "seq": 0}
    await comm.disconnect()


def test_an_unknown_rung_is_refused():
    with pytest.raises(ValueError):
        rungs.websocket_app("top")
    with pytest.raises(SystemExit):
        climb.parse(["--rungs", "bare,top"])


def test_a_phase_reports_cpu_per_handshake_and_what_the_cores_would_serve():
    figures = climb.phase_figures(1000, 3, 2.0, {"ws": 10.0, "clients": 5.0, "redis": 1.0},
                                  {"ws": 11.25, "clients": 5.5, "redis": 1.25})
    cpu = figures.pop("cpu_ms")
    assert figures == {"handshakes": 1000, "failed": 3, "per_s": 500}
    assert (cpu["ws"], cpu["clients"], cpu["redis"], cpu["all"]) == (1.25, 0.5, 0.25, 2.0)
    assert cpu["capacity_per_s"] == cpu["cores"] * 500
    assert "ws 1.25, redis 0.25, clients 0.50" in climb.words({**figures, "cpu_ms": cpu})


def test_the_summary_is_each_rungs_median_over_rounds():
    def figures(per_s, failed=0):
        return {"per_s": per_s, "failed": failed, "handshakes": 10,
                "cpu_ms": {"ws": per_s / 100, "clients": 1.0, "redis": 0.25,
                           "capacity_per_s": None}}
    table = climb.summary({"bare": [{"fresh": figures(100), "resume": figures(300)},
                                    {"fresh": figures(200, 2), "resume": figures(500)}]})
    assert "| bare | fresh | 150 | 1.50, 1.00, 0.25 | - | 2 |" in table
    assert "| bare | resume | 400 | 4.00, 1.00, 0.25 | - | 0 |" in table


def test_sockets_give_each_room_position_its_own_user_and_all_resume():
    """nginx is not in the way here, but the chat still counts a user once per room; no
    socket is a sender, which the generator would not park and resume."""
    made = climb.specs_for(9000, "t", 6, 2, lambda cookie: [("Cookie", cookie)],
                           ["a", "b", "c", "d"], 2)
    assert [s.url.rsplit("/", 2)[-2] for s in made] == (["storm-ladder-t-0"] * 3
                                                         + ["storm-ladder-t-1"] * 3)
    assert all(s.url.startswith("ws://127.0.0.1:9000/ws/chat/") for s in made)
    assert [s.headers[0][1] for s in made] == ["a", "b", "c", "b", "c", "d"]
    assert len({s.local_host for s in made}) == 6
    assert not any(s.sender for s in made)
