"""Run the design studio's HTTP gateway: `python -m services.gateway`.

SIGTERM or SIGINT drains it (services/gateway/server.py: run_server) and exits 0."""

import logging
import signal
import threading

from services.common import tracing
from services.common.runtime import bootstrap
from services.gateway.config import Settings
from services.gateway.server import run_server

log = logging.getLogger(__name__)


def main() -> None:
    bootstrap("gateway")  # JSON logs, the tracer provider, /metrics on METRICS_PORT
    settings = Settings.from_env()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with run_server(settings):
        stop.wait()
    tracing.shutdown()  # export the spans still queued


if __name__ == "__main__":
    main()
