"""Keep the served generation loaded: build at startup, rebuild on a switch, follow its live
changes, swap atomically.

A search never waits on a rebuild and never sees a half-built index: the new Generation is built
beside the old one and replaces it with one reference assignment. With `follow`, a second thread
reads the served generation's change stream and installs each batch as a new (cheap) snapshot
(atelier.live); when the changes pile up past what the snapshot should carry, or the stream was
trimmed past this replica, the generation is rebuilt from the store in the background and the
changes since that build are applied on top.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

import redis

from atelier.generation import Generation
from atelier.store import GENERATION_CHANNEL, CodeStore

Held = Generation  # or anything with a `version`; followed ones are atelier.live.LiveGeneration

log = logging.getLogger(__name__)
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0


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
        follow: bool = False,
        follow_block_ms: int = 500,
        on_changes: Callable[[Generation, int, int | None], None] | None = None,
    ):
        self.store = store
        self._build = build
        self._on_change = on_change
        self._poll_seconds = poll_seconds
        self._channel = channel
        self._current: Generation | None = None
        self._lock = threading.Lock()  # one rebuild at a time; readers never take it
        self._swap = threading.Lock()  # installs: a rebuild and a change batch never cross
        self._follow = follow
        self._follow_block_ms = follow_block_ms
        self._on_changes = on_changes
        self._rebuild_wanted = threading.Event()
        self._retries: dict[int, tuple[float, float]] = {}  # version -> (retry at, last delay)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="generation-watch", daemon=True)

    @property
    def current(self) -> Generation | None:
        return self._current

    def start(self) -> None:
        self.refresh()
        self._thread.start()
        if self._follow:
            threading.Thread(target=self._follow_changes, name="changes", daemon=True).start()
            threading.Thread(target=self._compact, name="compaction", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self, rebuild: bool = False) -> None:
        """Load the served version if it is not the one held.

        The `served` pointer is re-read every time (an announcement only wakes the watcher), and
        again after a build: `serve 2; serve 1` ends on 1 whatever order the messages arrive in,
        and a build overtaken by another switch is dropped, not installed. A version that fails
        to build is tried again after a backoff that doubles up to MAX_RETRY_SECONDS.
        """
        with self._lock:
            while True:
                version = self.store.served_version()
                if version is None or (
                    not rebuild and self._current is not None and self._current.version == version
                ):
                    return
                retry_at, _ = self._retries.get(version, (0.0, 0.0))
                if time.monotonic() < retry_at:
                    return
                try:
                    generation = self._build(version)
                except Exception as exc:
                    self._back_off(version, exc)
                    return
                self._retries.pop(version, None)
                if self.store.served_version() != version:
                    log.info("built version %d, but another is served now: building that", version)
                    continue
                self._install(self._caught_up(generation))
                return

    def _caught_up(self, built):
        """A followed build with the changes written while it loaded applied on top: installing
        it as loaded would take a replica back in time (a delete undone until the follower
        catches up)."""
        if not self._follow or not hasattr(built, "with_changes"):
            return built
        while True:
            batch = self.store.changes_after(built.version, *built.position)
            if batch.gap or not batch.changes:
                return built  # a gap: the follower asks for another build
            built = built.with_changes(batch)

    def _back_off(self, version: int, exc: Exception) -> None:
        _, delay = self._retries.get(version, (0.0, 0.0))
        delay = min(MAX_RETRY_SECONDS, max(FIRST_RETRY_SECONDS, delay * 2))
        self._retries[version] = (time.monotonic() + delay, delay)
        if isinstance(exc, LookupError):  # not written yet, or being removed: expected
            log.warning("cannot load version %s yet (%s); next try in %.0f s", version, exc, delay)
        else:
            log.exception("building version %s failed; next try in %.0f s", version, delay)

    def _install(self, generation: Generation) -> None:
        with self._swap:
            self._current = generation
        # A generation is millions of long-lived objects (metadata dicts, ids); keep them out of
        # the cyclic collector's sweeps, which otherwise stall requests. No gc.collect() first:
        # a full collection over such a heap is itself the stall (refcounting frees the old
        # generation when it is dropped).
        gc.freeze()
        log.info("now answering from version %d", generation.version)
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
                    if message is None or message.get("type") == "message":
                        self.refresh()  # a message only says "look": the pointer decides
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("lost Redis while watching generations (%s); retrying", exc)
                self._stop.wait(1.0)
            except Exception:  # a failed rebuild must not kill the watcher
                log.exception("generation rebuild failed; keeping the current one")
                self._stop.wait(1.0)
            finally:
                pubsub.close()

    def _follow_changes(self) -> None:
        """Apply the held generation's changes as they are written (one blocking read at a time)."""
        while not self._stop.is_set():
            held = self._current
            if held is None or not hasattr(held, "with_changes"):
                self._stop.wait(0.2)
                continue
            try:
                batch = self.store.changes_after(
                    held.version, *held.position, block_ms=self._follow_block_ms
                )
                if batch.gap:
                    log.warning("version %d: changes were trimmed past this replica", held.version)
                    self._rebuild_wanted.set()
                    self._stop.wait(1.0)
                    continue
                if not batch.changes:
                    if self._on_changes:
                        self._on_changes(held, 0, None)
                    continue
                updated = held.with_changes(batch)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("lost Redis while following changes (%s); retrying", exc)
                self._stop.wait(1.0)
                continue
            except Exception:
                log.exception("applying changes failed; rebuilding version %d", held.version)
                self._rebuild_wanted.set()
                self._stop.wait(1.0)
                continue
            with self._swap:
                installed = self._current is held
                if installed:  # a rebuild installed meanwhile reads on by itself
                    self._current = updated
            if installed and self._on_changes:
                newest_ms = int(batch.stream_id.split("-", 1)[0])  # a stream id is "ms-seq"
                self._on_changes(updated, held.owned_count(batch), newest_ms)
            if updated.needs_compaction:
                self._rebuild_wanted.set()

    def _compact(self) -> None:
        """Rebuild the served version from the store when asked (changes piled up, or a gap)."""
        while not self._stop.is_set():
            if not self._rebuild_wanted.wait(1.0):
                continue
            self._rebuild_wanted.clear()
            log.info("rebuilding the served version to fold its changes in")
            try:
                self.refresh(rebuild=True)
            except Exception:
                log.exception("rebuild failed; keeping the current snapshot")
            # Asked again meanwhile by the follower, about the snapshot just replaced: the new
            # one asks for itself if it needs to.
            self._rebuild_wanted.clear()
