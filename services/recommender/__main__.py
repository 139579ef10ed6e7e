"""Run the recommender gRPC service: `python -m services.recommender`."""

from services.common.runtime import bootstrap, wait_for_shutdown
from services.recommender.config import Settings
from services.recommender.server import run_server


def main() -> None:
    bootstrap("recommender")
    with run_server(Settings.from_env()) as running:
        wait_for_shutdown(running)


if __name__ == "__main__":
    main()
