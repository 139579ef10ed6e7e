"""Run the retrieval gRPC service: `python -m services.retrieval`."""

from services.common.runtime import bootstrap, wait_for_shutdown
from services.retrieval.config import Settings
from services.retrieval.server import run_server


def main() -> None:
    bootstrap("retrieval")
    with run_server(Settings.from_env()) as running:
        wait_for_shutdown(running)


if __name__ == "__main__":
    main()
