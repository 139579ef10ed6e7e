"""Run the embedded model server: `python -m services.modelserver`."""

from services.common.runtime import bootstrap, wait_for_shutdown
from services.modelserver.config import Settings
from services.modelserver.server import run_server


def main() -> None:
    bootstrap("modelserver")
    with run_server(Settings.from_env()) as running:
        wait_for_shutdown(running)


if __name__ == "__main__":
    main()
