"""Redis as run in production: behind Sentinel (with a failover), with AUTH (password and ACL user), and over TLS.

Each test runs a real gateway and a real worker whose ASR_REDIS_URL (results, registry, and the Celery broker)
is the URL form under test (config.redis); the stack's own inspection client talks to the data node directly.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.client import StreamClient
from tests import audio, reference
from tests.redis_servers import MASTER, OPENSSL, Server, sentinel, tls_files, tls_server
from tests.stack import wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


def _inspector(port: int, password: str = "pw", **options) -> redis.Redis:
    """The stack's own client, on the data node itself; no retries, so cleanup after the server is gone is quick."""
    return redis.Redis(
        port=port,
        password=password,
        db=1,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=1,
        **options,
    )


def _session(url: str, seed: int, seconds: float = 1.5):
    pcm = audio.noise(seconds, seed=seed)
    return pcm, asyncio.run(StreamClient(url, config={"wav_name": f"redis-{seed}"}, pace=0, timeout=30).run(pcm))


def _serves_exactly(url: str, model: str, seed: int) -> None:
    pcm, record = _session(url, seed)
    assert record.error is None and not record.errors, (record.error, record.errors)
    assert record.texts == [t for t in reference.chunk_texts(model, pcm) if t]


def test_gateway_and_worker_on_sentinel_serve_sessions_before_and_after_a_failover(make_stack, tiny_model, tmp_path):
    master = Server(tmp_path, "--requirepass", "pw", "--masterauth", "pw").start()
    replica = Server(
        tmp_path, "--requirepass", "pw", "--masterauth", "pw", "--replicaof", "127.0.0.1", str(master.port)
    ).start()
    watcher = sentinel(tmp_path, master.port, auth_pass="pw").start()
    probe = redis.Redis(port=watcher.port, decode_responses=True)
    try:
        wait_until(lambda: probe.sentinel_slaves(MASTER), 15, what="the sentinel to find the replica")
        url = f"sentinel://:pw@127.0.0.1:{watcher.port}/1?master={MASTER}"
        s = make_stack("sentinel", redis_url=url, heartbeat_interval=0.5, heartbeat_ttl=2)
        s.redis = _inspector(master.port)
        s.start_worker("w1")
        s.start_gateway()
        _serves_exactly(s.url, str(tiny_model), seed=80)

        killed = time.monotonic()
        master.stop()  # the sentinel promotes the replica after down-after-milliseconds (1 s)
        wait_until(
            lambda: probe.sentinel_get_master_addr_by_name(MASTER)[1] == replica.port,
            20,
            what="the sentinel to promote the replica",
        )
        promoted = time.monotonic()
        s.redis = _inspector(replica.port)

        def new_session_works():
            _, record = _session(s.url, seed=81)
            return record.final is not None and not record.errors

        wait_until(new_session_works, 30, interval=0.5, what="a new session to succeed after the failover")
        print(
            f"failover: replica promoted {promoted - killed:.1f} s after the master died, "
            f"new sessions served {time.monotonic() - killed:.1f} s after"
        )
        assert s.redis.exists(f"{s.prefix}worker:{s.worker_id('w1')}"), "the worker heartbeats on the new master"
    finally:
        watcher.stop()
        replica.stop()
        master.stop()


def test_password_and_acl_user_serve_sessions_and_a_wrong_password_is_a_clear_503(make_stack, tiny_model, tmp_path):
    server = Server(tmp_path, "--requirepass", "s3cr@t", "--user", "asr", "on", ">userpw", "~*", "&*", "+@all").start()
    try:
        base = f"127.0.0.1:{server.port}/1"
        s = make_stack("auth", redis_url=f"redis://:s3cr%40t@{base}")
        s.redis = _inspector(server.port, password="s3cr@t")
        s.start_worker("w1", redis_url=f"redis://asr:userpw@{base}")  # the ACL user, for results and broker
        s.start_gateway()
        _serves_exactly(s.url, str(tiny_model), seed=82)

        s.start_gateway("wrong", wait_healthy=False, redis_url=f"redis://:nope@{base}")
        status, body = s.get(s.http + "/readyz")
        assert status == 503 and body is not None
        assert "invalid username-password" in body["redis"], body
        assert "nope" not in s.procs[-1].log.read_text(), "the password is never logged"
    finally:
        server.stop()


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl to make a throw-away CA")
def test_rediss_with_a_private_ca_serves_sessions(make_stack, tiny_model, tmp_path):
    files = tls_files(tmp_path / "tls")
    server = tls_server(tmp_path, files, "--requirepass", "pw").start()
    try:
        url = f"rediss://:pw@127.0.0.1:{server.port}/1?ssl_ca_certs={files['ca.crt']}"
        s = make_stack("tls", redis_url=url)
        s.redis = _inspector(server.port, ssl=True, ssl_ca_certs=str(files["ca.crt"]))
        s.start_worker("w1")
        s.start_gateway()
        _serves_exactly(s.url, str(tiny_model), seed=83)
    finally:
        server.stop()
