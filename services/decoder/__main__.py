"""Run the decoder gRPC service: `python -m services.decoder`."""

from services.common.runtime import bootstrap, wait_for_shutdown
from services.decoder.config import Settings
from services.decoder.server import run_server


def main() -> None:
    bootstrap("decoder")
    with run_server(Settings.from_env()) as running:
        wait_for_shutdown(running)


if __name__ == "__main__":
    main()
