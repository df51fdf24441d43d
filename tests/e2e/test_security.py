"""API token, allowed origins and per-client session limits, checked before the WebSocket handshake; what the
token guards on the HTTP side (/metrics, /healthz details, /api/admission) and that it stays out of the log."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from bench.client import StreamClient
from tests import audio

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(redis_url, tiny_model, logdir):
    from tests.stack import Stack

    s = Stack(
        "guarded",
        redis_url,
        str(tiny_model),
        logdir,
        settings={"api_token": TOKEN, "allowed_origins": "http://good.example", "max_sessions_per_client": 2},
    )
    try:
        s.start_worker("w1")
        s.start_gateway()
        yield s
    finally:
        s.stop()


def session(url: str, **kwargs):
    return asyncio.run(StreamClient(url, pace=0, **kwargs).run(audio.noise(0.7, seed=80)))


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


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
        holders = [
            asyncio.create_task(StreamClient(url, pace=1.0).run(audio.noise(3.0, seed=81 + i))) for i in range(2)
        ]
        await asyncio.sleep(1.0)
        third = await StreamClient(url, pace=0).run(audio.noise(0.5))
        return await asyncio.gather(*holders), third

    holders, third = asyncio.run(three())
    assert third.refused_status == 429 and third.refused_body["code"] == "too_many_sessions"
    assert all(h.final is not None for h in holders)


def test_a_lowercase_bearer_scheme_is_accepted(guarded):
    record = session(guarded.url, headers={"Authorization": f"bearer {TOKEN}"})
    status, _, _ = fetch(guarded.http + "/api/queue", Authorization=f"  bearer   {TOKEN} ")
    assert record.final is not None and status == 200


def test_a_wrong_token_of_the_same_length_is_refused(guarded):
    wrong = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")
    record = session(f"{guarded.url}?token={wrong}")
    status, _, _ = fetch(guarded.http + "/api/queue", Authorization=f"Bearer {wrong}")
    assert record.refused_status == 401 and status == 401


def test_metrics_need_the_token(guarded):
    anonymous, headers, body = fetch(guarded.http + "/metrics")
    assert anonymous == 401 and json.loads(body)["code"] == "unauthorized"
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, body = fetch(guarded.http + "/metrics", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and b"asr_gateway_sessions" in body


def test_healthz_without_the_token_tells_only_the_status(guarded):
    anonymous, _, body = fetch(guarded.http + "/healthz")
    assert anonymous == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = fetch(guarded.http + "/healthz", Authorization=f"Bearer {TOKEN}")
    full = json.loads(body)
    assert status == 200 and full["status"] == "ok" and full["workers"] == 1 and "models" in full
    assert fetch(guarded.http + "/readyz")[0] == 200 and fetch(guarded.http + "/livez")[0] == 200


def test_a_401_from_admission_does_not_tell_the_load(guarded):
    status, _, body = fetch(guarded.http + "/api/admission", Authorization="Bearer wrong")
    refused = json.loads(body)
    assert status == 401 and refused == {"admitting": False, "refusal": refused["refusal"]}
    assert refused["refusal"]["code"] == "unauthorized"
    status, _, body = fetch(guarded.http + "/api/admission", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and json.loads(body)["admitting"] is True and "pending" in json.loads(body)


def test_the_token_stays_out_of_the_gateway_log(guarded):
    """What the browser page sends: the token in the /ws URL and, when the page was opened as /?token=…, in the
    Referer. gunicorn writes no access line for an accepted WebSocket (flask-sock ends it with StopIteration),
    but does for a refused handshake and for every HTTP request."""
    accepted = session(f"{guarded.url}?token={TOKEN}")
    refused = session(f"{guarded.url}?token={TOKEN}&probe=log", headers={"Origin": "http://evil.example"})
    fetch(f"{guarded.http}/healthz?token={TOKEN}", Referer=f"{guarded.http}/?token={TOKEN}")
    gateway = next(p for p in guarded.procs if p.name == "gateway")
    expected = ("/ws?token=[redacted]&probe=log", "/healthz?token=[redacted]", "/?token=[redacted]")

    def logged() -> str:
        text = gateway.log.read_text(errors="replace")
        return text if all(e in text for e in expected) else ""

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert accepted.final is not None and refused.refused_status == 403
    assert logged(), gateway.tail()
    assert TOKEN not in gateway.log.read_text(errors="replace")
