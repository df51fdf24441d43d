"""API token, allowed origins and per-client session limits, checked before the WebSocket handshake."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from bench.client import StreamClient
from tests import audio

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(redis_url, tiny_model, logdir):
    from tests.stack import Stack

    s = Stack("guarded", redis_url, str(tiny_model), logdir,
              settings={"api_token": TOKEN, "allowed_origins": "http://good.example", "max_sessions_per_client": 2})
    try:
        s.start_worker("w1")
        s.start_gateway()
        yield s
    finally:
        s.stop()


def session(url: str, **kwargs):
    return asyncio.run(StreamClient(url, pace=0, **kwargs).run(audio.noise(0.7, seed=80)))


def test_without_the_token_ws_and_api_answer_401(guarded):
    record = session(guarded.url)
    status, body = guarded.get(guarded.http + "/api/queue")
    assert record.refused_status == 401 and record.refused_body["code"] == "unauthorized"
    assert status == 401 and body["code"] == "unauthorized"


def test_the_token_works_as_bearer_header_or_query_parameter(guarded):
    by_header = session(guarded.url, headers={"Authorization": f"Bearer {TOKEN}"})
    by_query = session(f"{guarded.url}?token={TOKEN}")
    request = urllib.request.Request(guarded.http + "/api/queue", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    assert by_header.final is not None and by_query.final is not None


def test_only_listed_origins_may_open_sessions_from_a_browser(guarded):
    bad = session(f"{guarded.url}?token={TOKEN}", headers={"Origin": "http://evil.example"})
    good = session(f"{guarded.url}?token={TOKEN}", headers={"Origin": "http://good.example"})
    assert bad.refused_status == 403 and bad.refused_body["code"] == "origin_not_allowed"
    assert good.final is not None


def test_a_client_over_its_session_limit_gets_429(guarded):
    url = f"{guarded.url}?token={TOKEN}"

    async def three():
        holders = [asyncio.create_task(StreamClient(url, pace=1.0).run(audio.noise(3.0, seed=81 + i)))
                   for i in range(2)]
        await asyncio.sleep(1.0)
        third = await StreamClient(url, pace=0).run(audio.noise(0.5))
        return await asyncio.gather(*holders), third

    holders, third = asyncio.run(three())
    assert third.refused_status == 429 and third.refused_body["code"] == "too_many_sessions"
    assert all(h.final is not None for h in holders)
