"""Run the design studio's HTTP gateway: `python -m services.gateway`."""

import signal
import threading

from services.common.runtime import configure_logging
from services.gateway.config import Settings
from services.gateway.server import run_server


def main() -> None:
    configure_logging()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with run_server(Settings.from_env()):
        stop.wait()


if __name__ == "__main__":
    main()
