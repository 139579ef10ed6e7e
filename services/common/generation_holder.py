"""Keep the served generation loaded: build at startup, rebuild on a switch, swap atomically.

A search never waits on a rebuild and never sees a half-built index: the new Generation is built
beside the old one and replaces it with one reference assignment.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable

import redis

from atelier.generation import Generation
from atelier.store import GENERATION_CHANNEL, CodeStore

log = logging.getLogger(__name__)


class GenerationHolder:
    """Holds whatever `build(version)` makes of the version `store.served_version()` names.

    The personalization service holds its served preference model with it too: there `store` is
    a PreferenceStore and `channel` the preference models' announcements.
    """

    def __init__(
        self,
        store: CodeStore,
        build: Callable[[int], Generation],
        on_change: Callable[[Generation], None] | None = None,
        poll_seconds: float = 5.0,
        channel: str = GENERATION_CHANNEL,
    ):
        self.store = store
        self._build = build
        self._on_change = on_change
        self._poll_seconds = poll_seconds
        self._channel = channel
        self._current: Generation | None = None
        self._lock = threading.Lock()  # one rebuild at a time; readers never take it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="generation-watch", daemon=True)

    @property
    def current(self) -> Generation | None:
        return self._current

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self, announced: int | None = None) -> None:
        """Load the served generation if it is not the one held."""
        with self._lock:
            version = announced if announced is not None else self.store.served_version()
            if version is None or (self._current is not None and self._current.version == version):
                return
            try:
                generation = self._build(version)
            except LookupError as exc:
                log.warning("cannot load generation %s yet: %s", version, exc)
                return
            self._current = generation
            # A generation is millions of long-lived objects (metadata dicts, ids); keep them out
            # of the cyclic collector's sweeps, which otherwise stall requests. Refcounting still
            # frees them when the generation is replaced.
            gc.collect()
            gc.freeze()
            log.info("now answering from generation %d", version)
            if self._on_change:
                self._on_change(generation)

    def _watch(self) -> None:
        # Pub/sub is fire-and-forget, so the pointer is also polled: a missed announcement costs
        # at most poll_seconds.
        while not self._stop.is_set():
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=self._poll_seconds)
                    if message and message.get("type") == "message":
                        self.refresh(int(message["data"]))
                    else:
                        self.refresh()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("lost Redis while watching generations (%s); retrying", exc)
                self._stop.wait(1.0)
            except Exception:  # a failed rebuild must not kill the watcher
                log.exception("generation rebuild failed; keeping the current one")
                self._stop.wait(1.0)
            finally:
                pubsub.close()
