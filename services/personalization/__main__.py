"""Run the personalization gRPC service: `python -m services.personalization`."""

from services.common.runtime import bootstrap, wait_for_shutdown
from services.personalization.config import Settings
from services.personalization.server import run_server


def main() -> None:
    bootstrap("personalization")
    with run_server(Settings.from_env()) as running:
        wait_for_shutdown(running)


if __name__ == "__main__":
    main()
