"""Relays results from the sessions' Redis channels to their handlers: one pattern subscription per gateway.

Every session of a gateway process gets an id that starts with the process's random tag (:attr:`ResultRouter.tag`),
so its result channel ``<prefix>result:<tag>-<session>`` matches the one ``PSUBSCRIBE <prefix>result:<tag>-*``
the router sends when it starts. A new session therefore needs no subscription of its own: nothing can go
wrong between its handshake and its first result, however many sessions arrive at once (a per-session SUBSCRIBE
did, under a burst right after start), and Redis sees no SUBSCRIBE/UNSUBSCRIBE traffic per session. Admission
waits for :attr:`ResultRouter.connected`, so no session is admitted before results can reach it.

redis-py's PubSub is not thread-safe, so a single listener thread owns it. If the connection drops, results
published meanwhile are gone (pub/sub keeps nothing); PubSub re-subscribes the pattern when it reconnects, and
every session is then told through its ``on_reset`` callback, and replays its unfinished chunks.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from tasks.wire import ChunkResult, Keys, SentenceResult, decode_result

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # longest the listener blocks for a message before checking for stop


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


@dataclass
class _Subscriber:
    on_result: Callable[[ChunkResult | SentenceResult], None]
    on_reset: Callable[[], None]


class ResultRouter:
    """Owns the gateway's pub/sub connection and dispatches each result to its session's callback."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.tag = uuid.uuid4().hex[:12]
        self.pattern = glob_escape(keys.result_channel(f"{self.tag}-")) + "*"
        self._subscribers: dict[str, _Subscriber] = {}
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        """True while the pattern subscription is in place (results can reach this gateway's sessions)."""
        return self._subscribed.is_set()

    def new_session_id(self) -> str:
        return f"{self.tag}-{uuid.uuid4().hex}"

    def start(self, wait: float = 5.0) -> ResultRouter:
        """Start listening; waits up to ``wait`` seconds for the subscription (admission refuses until then)."""
        self._thread = threading.Thread(target=self._run, name="asr-results", daemon=True)
        self._thread.start()
        self._subscribed.wait(wait)
        return self

    def stop(self) -> None:
        self._stop.set()

    def subscribe(
        self, session_id: str, on_result: Callable[[ChunkResult | SentenceResult], None], on_reset: Callable[[], None]
    ) -> None:
        """Route the session's results to ``on_result``. No Redis command: the pattern already covers it."""
        if not session_id.startswith(f"{self.tag}-"):
            raise ValueError(f"session {session_id!r} was not named by this router")
        self._subscribers[self.keys.result_channel(session_id)] = _Subscriber(on_result, on_reset)

    def unsubscribe(self, session_id: str) -> None:
        self._subscribers.pop(self.keys.result_channel(session_id), None)

    def _run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        lost = False
        while not self._stop.is_set():
            try:
                if not pubsub.patterns:
                    pubsub.psubscribe(self.pattern)
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if not self._subscribed.is_set() and pubsub.subscribed:
                    self._subscribed.set()
                if lost and pubsub.subscribed:
                    lost = self._recovered()
                if message is not None:
                    self._dispatch(message)
            except redis.RedisError as exc:
                if not lost:
                    logger.warning("result channel connection lost (%s); reconnecting", exc)
                lost = True
                self._subscribed.clear()
                self._stop.wait(0.5)

    def _recovered(self) -> bool:
        """Back online (PubSub re-subscribed itself): tell every session results may have been lost."""
        logger.info("result channel connection restored; %d session(s) will replay", len(self._subscribers))
        for subscriber in list(self._subscribers.values()):
            subscriber.on_reset()
        return False

    def _dispatch(self, message: dict) -> None:
        if message.get("type") != "pmessage":
            return
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        subscriber = self._subscribers.get(channel)
        if subscriber is None:
            return
        try:
            result = decode_result(message["data"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("malformed result on %s: %s", channel, exc)
            return
        subscriber.on_result(result)
