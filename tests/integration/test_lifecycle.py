"""Process lifecycle: a service stops cleanly on SIGTERM, and refuses to start with bad settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from atelier.processes import free_port
from services.common.launcher import start_process, wait_serving

pytestmark = pytest.mark.integration


def test_sigterm_stops_a_service_gracefully(tmp_path, models_dir):
    port = free_port()
    env = {"MODELS_DIR": str(models_dir), "MODEL_SERVER_PORT": str(port)}
    server = start_process(
        "modelserver",
        [sys.executable, "-m", "services.modelserver"],
        env,
        tmp_path,
        f"127.0.0.1:{port}",
    )
    try:
        wait_serving(server)
        os.kill(server.pid, signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    log = (tmp_path / "modelserver.log").read_text()
    assert "received SIGTERM, shutting down" in log


def test_missing_required_setting_fails_fast_with_its_name():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "services.retrieval"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "missing required environment variable REDIS_URL" in result.stderr + result.stdout
