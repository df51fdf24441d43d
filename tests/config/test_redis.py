"""config.redis: the one URL format, translated into redis-py clients and kombu broker settings.

The translations are checked as values; AUTH, TLS and Sentinel are also checked against real servers
(tests.redis_servers), with redis-py and with a kombu connection built from :func:`celery_broker`.
"""

from __future__ import annotations

import ssl
import threading

import pytest
import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import redis as redis_config
from tests import redis_servers
from tests.redis_servers import MASTER, Server, sentinel, tls_files, tls_server

NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH or handshake for seconds by default
needs_redis = pytest.mark.skipif(redis_servers.BINARY is None, reason="needs the redis-server binary")


def test_plain_urls_keep_host_port_db_and_auth():
    target = redis_config.parse("redis://asr:p%40ss@redis.internal:6380/3")
    assert target.hosts == (("redis.internal", 6380),) and target.db == 3
    assert (target.username, target.password) == ("asr", "p@ss") and target.tls is None
    assert redis_config.parse("redis://:secret@h").auth() == {"username": None, "password": "secret"}
    assert redis_config.parse("redis://h").hosts == (("h", 6379),)
    assert redis_config.celery_broker("redis://asr:p%40ss@h:1/2")["broker_url"] == "redis://asr:p%40ss@h:1/2"


def test_rediss_verifies_certificates_unless_told_otherwise():
    target = redis_config.parse("rediss://h:6380/1?ssl_ca_certs=/etc/ca.pem")
    assert target.tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": True}
    loose = redis_config.parse("rediss://h?ssl_cert_reqs=none").tls
    assert loose == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
    conf = redis_config.celery_broker("rediss://:pw@h:6380/1?ssl_ca_certs=/etc/ca.pem", {"ack_emulation": False})
    assert conf["broker_url"] == "rediss://:pw@h:6380/1", "options travel in broker_use_ssl, not in the URL"
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert conf["broker_transport_options"] == {"ack_emulation": False}


def test_sentinel_urls_become_master_for_clients_and_kombu_sentinel_urls():
    url = "sentinel://:pw@s1:26379,s2,[::1]:26380/2?master=cache&sentinel_password=spw"
    target = redis_config.parse(url)
    assert target.hosts == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (target.master, target.db, target.password, target.sentinel_password) == ("cache", 2, "pw", "spw")
    conf = redis_config.celery_broker(url, {"ack_emulation": False})
    assert conf["broker_url"] == "sentinel://:pw@s1:26379/2;sentinel://:pw@s2:26379/2;sentinel://:pw@[::1]:26380/2"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "cache" and options["ack_emulation"] is False
    assert options["sentinel_kwargs"] == {"username": None, "password": "spw"}
    assert "sentinel_kwargs" not in redis_config.celery_broker("sentinel://s1?master=m")["broker_transport_options"]
    client = redis_config.client(url, socket_timeout=5)
    assert client.connection_pool.service_name == "cache"
    assert client.connection_pool.connection_kwargs["db"] == 2


def test_unix_sockets_reach_kombu_as_redis_socket_urls():
    assert redis_config.parse("unix:///run/redis.sock?db=4").path == "/run/redis.sock"
    conf = redis_config.celery_broker("unix://:pw@/run/redis.sock?db=4")
    assert conf["broker_url"] == "redis+socket://:pw@/run/redis.sock?virtual_host=4"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://h", "scheme must be one of"),
        ("redis://h/0?socket_timeout=1", "unknown option"),
        ("redis://a,b", "one host only"),
        ("redis://h:port", "not a number"),
        ("sentinel://s1", "needs ?master="),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://", "no socket path"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url, reason):
    with pytest.raises(ValueError, match=reason.replace("?", r"\?")):
        redis_config.parse(url)


def test_errors_and_redaction_never_show_passwords():
    with pytest.raises(ValueError) as excinfo:
        redis_config.parse("redis://u:hunter2@h/0?bogus=1")
    assert "hunter2" not in str(excinfo.value)
    assert redis_config.redact("redis://u:hunter2@h/0") == "redis://u:***@h/0"
    assert (
        redis_config.redact("sentinel://:a@s/0?master=m&sentinel_password=b")
        == "sentinel://***@s/0?master=m&sentinel_password=***"
    )
    assert redis_config.redact("redis://h:6379/0") == "redis://h:6379/0"


# --- against real servers --------------------------------------------------------------------------------------


def _kombu_roundtrip(url: str) -> bytes:
    """Publish one message into a queue and read it back through kombu, configured as Celery would be."""
    conf = redis_config.celery_broker(url, {"ack_emulation": False})
    with Connection(
        conf["broker_url"],
        ssl=conf.get("broker_use_ssl"),
        transport_options=conf["broker_transport_options"],
        connect_timeout=5,
    ) as conn:
        queue = conn.SimpleQueue("asrtest-config-redis")
        try:
            queue.put(b"hello", serializer="raw")
            message = queue.get(timeout=5)
            message.ack()
            return message.body
        finally:
            queue.clear()
            queue.close()


@needs_redis
def test_password_and_acl_user_for_clients_and_broker(tmp_path):
    server = Server(tmp_path, "--requirepass", "s3cr@t", "--user", "asr", "on", ">userpw", "~*", "&*", "+@all").start()
    try:
        base = f"127.0.0.1:{server.port}/0"
        for url in (f"redis://:s3cr%40t@{base}", f"redis://asr:userpw@{base}"):
            assert redis_config.client(url).ping()
            assert _kombu_roundtrip(url) == b"hello"
        with pytest.raises(redis.AuthenticationError):
            redis_config.client(f"redis://:wrong@{base}", retry=NO_RETRY).ping()
        with pytest.raises(redis.AuthenticationError):
            redis_config.client(f"redis://{base}", retry=NO_RETRY).set("k", "v")
    finally:
        server.stop()


@needs_redis
@pytest.mark.skipif(redis_servers.OPENSSL is None, reason="needs openssl to make a throw-away CA")
def test_rediss_with_a_private_ca_for_clients_and_broker(tmp_path):
    files = tls_files(tmp_path / "tls")
    server = tls_server(tmp_path, files, "--requirepass", "pw").start()
    try:
        url = f"rediss://:pw@127.0.0.1:{server.port}/0?ssl_ca_certs={files['ca.crt']}"
        assert redis_config.client(url).ping()
        assert _kombu_roundtrip(url) == b"hello"
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):  # system CAs do not know it
            redis_config.client(f"rediss://:pw@127.0.0.1:{server.port}/0", retry=NO_RETRY).ping()
    finally:
        server.stop()


@needs_redis
def test_sentinel_client_finds_the_master_for_commands_pubsub_and_the_broker(tmp_path):
    master = Server(tmp_path, "--requirepass", "pw", "--masterauth", "pw").start()
    watcher = sentinel(tmp_path, master.port, auth_pass="pw").start()
    try:
        url = f"sentinel://:pw@127.0.0.1:{watcher.port}/0?master={MASTER}"
        client = redis_config.client(url, socket_timeout=5)
        client.set("asrtest-config-redis-key", "v")
        assert redis.Redis(port=master.port, password="pw").get("asrtest-config-redis-key") == b"v"
        pubsub = client.pubsub()
        pubsub.subscribe("asrtest-channel")
        pubsub.get_message(timeout=2)  # the subscribe confirmation
        threading.Timer(0.2, lambda: client.publish("asrtest-channel", "hi")).start()
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == b"hi"
        pubsub.close()
        assert _kombu_roundtrip(url) == b"hello"
    finally:
        watcher.stop()
        master.stop()


@needs_redis
def test_unix_socket_with_a_password_for_clients_and_broker(tmp_path):
    sock = tmp_path / "redis.sock"
    server = Server(tmp_path, "--unixsocket", str(sock), "--requirepass", "pw").start()
    try:
        url = f"unix://:pw@{sock}?db=2"
        client = redis_config.client(url)
        client.set("asrtest-config-redis-key", "v")
        assert redis.Redis(port=server.port, password="pw", db=2).get("asrtest-config-redis-key") == b"v"
        assert _kombu_roundtrip(url) == b"hello"
    finally:
        server.stop()
