"""Run the encoder gRPC service: `python -m services.encoder` (workers: `celery -A services.encoder.tasks worker`)."""

from services.common.runtime import bootstrap, wait_for_shutdown
from services.encoder.config import Settings
from services.encoder.server import run_server


def main() -> None:
    bootstrap("encoder")
    with run_server(Settings.from_env()) as running:
        wait_for_shutdown(running)


if __name__ == "__main__":
    main()
