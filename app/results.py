"""Relays results from the sessions' Redis channels to their handlers: one pub/sub connection per gateway.

redis-py's PubSub is not thread-safe, so a single listener thread owns it: handlers ask for (un)subscriptions
through a queue, and :meth:`ResultRouter.subscribe` returns once the SUBSCRIBE has been sent, before the session
submits its first chunk — so no result can be published before someone listens.

If the connection drops, results published meanwhile are gone (pub/sub keeps nothing). After reconnecting, every
session is told through its ``on_reset`` callback, and replays its unfinished chunks.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from tasks.wire import ChunkResult, Keys

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.02  # how long the listener blocks for a message before serving (un)subscribe requests


@dataclass
class _Subscriber:
    on_result: Callable[[ChunkResult], None]
    on_reset: Callable[[], None]


class ResultRouter:
    """Owns the gateway's pub/sub connection and dispatches each result to its session's callback."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._subscribers: dict[str, _Subscriber] = {}
        self._requests: queue.Queue[tuple[str, str, threading.Event | None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False

    def start(self) -> ResultRouter:
        self._thread = threading.Thread(target=self._run, name="asr-results", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def subscribe(self, session_id: str, on_result: Callable[[ChunkResult], None],
                  on_reset: Callable[[], None], timeout: float = 5.0) -> bool:
        """Listen to a session's channel; True once the SUBSCRIBE was sent (False if Redis is unreachable)."""
        channel = self.keys.result_channel(session_id)
        self._subscribers[channel] = _Subscriber(on_result, on_reset)
        sent = threading.Event()
        self._requests.put(("subscribe", channel, sent))
        return sent.wait(timeout)

    def unsubscribe(self, session_id: str) -> None:
        channel = self.keys.result_channel(session_id)
        if self._subscribers.pop(channel, None) is not None:
            self._requests.put(("unsubscribe", channel, None))

    def _run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        lost = False
        while not self._stop.is_set():
            try:
                self._serve_requests(pubsub)
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if lost:
                    lost = self._recovered()
                self.connected = True
                if message is not None:
                    self._dispatch(message)
            except redis.RedisError as exc:
                if not lost:
                    logger.warning("result channel connection lost (%s); reconnecting", exc)
                lost, self.connected = True, False
                self._stop.wait(0.5)

    def _serve_requests(self, pubsub: redis.client.PubSub) -> None:
        """Send every queued (un)subscription, one command each way (a burst of new sessions costs one write)."""
        subscribe, unsubscribe, waiting = [], [], []
        while True:
            try:
                action, channel, sent = self._requests.get_nowait()
            except queue.Empty:
                break
            if action == "subscribe" and channel in self._subscribers:
                subscribe.append(channel)
            elif action == "unsubscribe" and channel not in self._subscribers:
                unsubscribe.append(channel)
            if sent is not None:
                waiting.append(sent)
        try:
            if subscribe:
                pubsub.subscribe(*subscribe)
            if unsubscribe and pubsub.subscribed:
                pubsub.unsubscribe(*unsubscribe)
        except redis.RedisError:
            for channel in unsubscribe:  # retried after the reconnect; the subscribers' waits time out
                self._requests.put(("unsubscribe", channel, None))
            raise
        for sent in waiting:
            sent.set()

    def _recovered(self) -> bool:
        """Back online (PubSub resubscribed itself): tell every session results may have been lost."""
        logger.info("result channel connection restored; %d session(s) will replay", len(self._subscribers))
        for subscriber in list(self._subscribers.values()):
            subscriber.on_reset()
        return False

    def _dispatch(self, message: dict) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        subscriber = self._subscribers.get(channel)
        if subscriber is None:
            return
        try:
            result = ChunkResult.decode(message["data"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("malformed result on %s: %s", channel, exc)
            return
        subscriber.on_result(result)
