"""The launcher's supervision: a killed process comes back with the same argv and environment,
a stopped one does not, and a crash loop is slowed down the way Docker's restart policy does."""

from __future__ import annotations

import sys
import time

import pytest

from services.common.launcher import (
    RESTART_DELAY_MAX_SECONDS,
    next_restart_delay,
    start_process,
)

pytestmark = pytest.mark.integration

# Appends its argv and one environment variable to a file, then sleeps.
RECORDER = (
    "import os, sys, time\n"
    "with open(sys.argv[1], 'a') as f: f.write(' '.join(sys.argv[2:]) + ':' + os.environ['MARK'] + '\\n')\n"
    "time.sleep(300)\n"
)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_next_restart_delay_doubles_and_resets_like_docker():
    delays, delay = [], None
    for _ in range(12):
        delay = next_restart_delay(delay, ran=0.5)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == RESTART_DELAY_MAX_SECONDS
    assert next_restart_delay(delays[-1], ran=10.0) == 0.1  # it stayed up: start over


def test_killed_process_restarts_with_the_same_argv_and_env_until_stopped(tmp_path):
    record = tmp_path / "starts.txt"
    argv = [sys.executable, "-c", RECORDER, str(record), "--port", "1234"]
    managed = start_process("sleeper", argv, {"MARK": "same-env"}, tmp_path)
    try:
        managed.supervise()
        wait_until(lambda: record.exists() and len(record.read_text().splitlines()) == 1)
        first_pid = managed.pid
        managed.kill_tree()
        wait_until(lambda: len(record.read_text().splitlines()) == 2)
        assert managed.restarts == 1
        assert managed.pid != first_pid
        assert record.read_text().splitlines() == ["--port 1234:same-env"] * 2

        managed.stop()
        assert managed.process.poll() is not None
        time.sleep(1.0)  # ten times the first restart delay
        assert managed.restarts == 1
        assert len(record.read_text().splitlines()) == 2
    finally:
        managed.stop()


def test_crash_loop_is_throttled(tmp_path):
    managed = start_process("crasher", [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path)
    try:
        managed.supervise()
        time.sleep(2.0)
        # Delays of 0.1, 0.2, 0.4, 0.8 s: at most 4 restarts by 1.5 s and the 5th at 3.1 s.
        assert 1 <= managed.restarts <= 4
    finally:
        managed.stop()
