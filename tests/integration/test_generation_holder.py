"""GenerationHolder against a real Redis, through the holder itself: the `served` pointer decides
what is held whatever order announcements arrive in, a build overtaken by another switch is never
installed, readers only ever see whole builds, and a version that fails to build is retried with
a backoff rather than every poll."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import pytest

from atelier.store import GENERATION_CHANNEL, PREFIX
from services.common.generation_holder import GenerationHolder

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Built:
    """What a build made: its version, and a payload that is only whole once the build ends."""

    version: int
    rows: tuple[int, ...]


def point_at(store, version: int) -> None:
    """What CodeStore.serve does, without the codes it checks for."""
    pipe = store.redis.pipeline(transaction=True)
    pipe.set(f"{PREFIX}served", version)
    pipe.publish(GENERATION_CHANNEL, str(version))
    pipe.execute()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_serve_2_then_1_ends_on_1_and_never_installs_the_overtaken_build(store):
    started: list[int] = []
    installed: list[int] = []
    slow_build_running = threading.Event()

    def build(version: int) -> Built:
        started.append(version)
        if version == 2:
            slow_build_running.set()
            time.sleep(0.5)  # `serve 1` lands while this runs
        return Built(version, tuple(range(version * 1000)))

    point_at(store, 3)
    holder = GenerationHolder(store, build, lambda g: installed.append(g.version), 0.05)
    holder.start()
    try:
        assert holder.current.version == 3
        seen: list[Built] = []
        reading = threading.Event()

        def read() -> None:  # a reader in a tight loop, as searches are
            while not reading.is_set():
                seen.append(holder.current)

        reader = threading.Thread(target=read)
        reader.start()
        point_at(store, 2)
        assert slow_build_running.wait(5)
        point_at(store, 1)
        wait_until(lambda: holder.current.version == 1)
        time.sleep(0.3)  # any late announcement of 2 must not move it
        reading.set()
        reader.join()
        assert holder.current.version == 1
        assert installed == [3, 1]  # 2 was built, overtaken, dropped
        assert 2 in started
        assert {b.version for b in seen} <= {3, 1}
        assert all(len(b.rows) == b.version * 1000 for b in seen)  # never a partial build
    finally:
        holder.stop()


def test_a_failing_version_is_retried_with_backoff_not_every_poll(store):
    attempts: list[float] = []

    def build(version: int) -> Built:
        if version == 5:
            attempts.append(time.monotonic())
            raise LookupError("generation 5 has no codes yet")
        return Built(version, ())

    point_at(store, 4)
    holder = GenerationHolder(store, build, poll_seconds=0.05)
    holder.start()
    try:
        point_at(store, 5)
        time.sleep(3.2)  # 64 polls; backoff allows tries at about 0, 1 and 3 s
        assert 2 <= len(attempts) <= 3
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert all(gap >= 0.9 for gap in gaps)
        assert holder.current.version == 4  # the last good one keeps answering
        point_at(store, 4)
        time.sleep(0.2)
        assert holder.current.version == 4
    finally:
        holder.stop()
