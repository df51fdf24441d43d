"""The fast publisher writes exactly what Celery's send_task would, and a real worker accepts it (e2e tests)."""

from __future__ import annotations

import json

import redis

from app.publisher import TaskPublisher
from config.settings import Settings
from tasks import wire
from tasks.celery_app import create_celery_app
from tests.stack import wait_until


def stored(client: redis.Redis, queue: str) -> dict:
    message = json.loads(client.lpop(queue))
    for volatile in ("id", "root_id", "expires", "origin", "argsrepr"):
        message["headers"].pop(volatile)
    for volatile in ("correlation_id", "reply_to", "delivery_tag"):
        message["properties"].pop(volatile)
    return message


def test_the_envelope_matches_send_task_field_for_field(redis_url):
    client = redis.Redis.from_url(redis_url)
    app = create_celery_app(Settings.from_env({}, redis_url=redis_url))
    payload = {"stream": "s/0", "seq": 1, "audio": b"\x00\x01" * 50}
    app.send_task(
        wire.TASK_CHUNK,
        args=(payload,),
        queue="pubtest",
        routing_key="pubtest",
        serializer=wire.SERIALIZER,
        expires=300,
        ignore_result=True,
    )
    publisher = TaskPublisher(app, client).start()
    try:
        publisher.enqueue("pubtest", publisher.message(wire.TASK_CHUNK, (payload,), queue="pubtest", expires=300))
        wait_until(lambda: client.llen("pubtest") == 2, 5, what="the published message")
    finally:
        publisher.stop()
    theirs, ours = stored(client, "pubtest"), stored(client, "pubtest")
    assert ours == theirs


def test_messages_keep_their_order_and_a_failure_reaches_every_sender(redis_url):
    client = redis.Redis.from_url(redis_url)
    app = create_celery_app(Settings.from_env({}, redis_url=redis_url))
    publisher = TaskPublisher(app, client).start()
    try:
        for i in range(300):
            publisher.enqueue("ordered", str(i).encode())
        wait_until(lambda: client.llen("ordered") == 300, 5, what="300 messages")
        assert [int(m) for m in reversed(client.lrange("ordered", 0, -1))] == list(range(300))
    finally:
        publisher.stop()
        client.delete("ordered")
    dead = TaskPublisher(app, redis.Redis(port=1, socket_connect_timeout=0.5)).start()
    failed = []
    dead.enqueue("q", b"m", lambda: failed.append("a"))
    dead.enqueue("q", b"m", lambda: failed.append("b"))
    wait_until(lambda: len(failed) == 2, 10, what="both failure callbacks")
    dead.stop()
