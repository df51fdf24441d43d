"""The API token check (scheme, whitespace, header or query, comparison on bytes) and admit's order of refusals."""

from __future__ import annotations

import hmac

import pytest

from app import admission
from app.admission import admit, bearer_token, token_ok
from app.monitor import Snapshot
from config.settings import Settings

TOKEN = "s3cret-token"
GUARDED = Settings(api_token=TOKEN)


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}",
        f"bearer {TOKEN}",
        f"BEARER {TOKEN}",
        f"bEaReR {TOKEN}",
        f"  Bearer   {TOKEN}  ",
        f"Bearer\t{TOKEN}",
    ],
)
def test_the_bearer_scheme_is_case_insensitive_and_whitespace_is_ignored(header):
    assert token_ok(GUARDED, header, None)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        TOKEN,
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"Bearer{TOKEN}",
        f"Bearer {TOKEN[:-1]}X",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN.upper()}",
        f"Bearer {TOKEN} {TOKEN}",
    ],
)
def test_a_missing_wrong_or_other_scheme_header_is_refused(header):
    assert not token_ok(GUARDED, header, None)


def test_the_query_token_works_alone_and_must_match_exactly():
    assert token_ok(GUARDED, None, TOKEN)
    assert not token_ok(GUARDED, None, TOKEN[:-1] + "X")  # same length, last byte differs
    assert not token_ok(GUARDED, None, "")
    assert not token_ok(GUARDED, None, f" {TOKEN}")


def test_either_credential_is_enough_when_the_other_is_wrong():
    assert token_ok(GUARDED, "Bearer wrong", TOKEN)
    assert token_ok(GUARDED, f"Bearer {TOKEN}", "wrong")
    assert token_ok(GUARDED, f"Basic {TOKEN}", TOKEN)


def test_non_ascii_tokens_compare_as_bytes_instead_of_raising():
    settings = Settings(api_token="clé-секрет")
    assert token_ok(settings, None, "clé-секрет")
    assert not token_ok(settings, "Bearer clé-секреT", "clé-секреt")
    assert not token_ok(GUARDED, "Bearer ключ", "ключ")  # compare_digest on str would raise TypeError


def test_without_a_configured_token_anything_passes():
    assert token_ok(Settings(api_token=""), None, None)
    assert token_ok(Settings(api_token=""), "Bearer whatever", "whatever")


def test_both_credentials_go_through_compare_digest_as_bytes(monkeypatch):
    calls, compare = [], hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return compare(a, b)

    monkeypatch.setattr(admission.hmac, "compare_digest", spy)
    assert not token_ok(GUARDED, "bearer nope", "nope")
    assert calls == [(bytes, bytes), (bytes, bytes)]


def test_bearer_token_extracts_the_credentials_only_for_the_bearer_scheme():
    assert bearer_token(" bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_admit_refuses_a_bad_token_before_anything_else():
    down = Snapshot(redis_error="connection refused")  # would be a 503 carrying Retry-After
    refusal = admit(
        GUARDED,
        down,
        room=False,
        client_sessions=10**6,
        auth_header="Bearer wrong",
        query_token=None,
        origin="http://evil.example",
    )
    assert refusal is not None and (refusal.status, refusal.code, refusal.retry_after) == (401, "unauthorized", None)
    admitted = admit(
        GUARDED, down, room=False, client_sessions=0, auth_header=f"bearer {TOKEN}", query_token=None, origin=None
    )
    assert admitted is not None and admitted.status == 503
