"""``python -m stepmail_ingest [serve|migrate]``."""

from stepmail_common.runner import main as run
from stepmail_ingest.app import create_app, run_migrations
from stepmail_ingest.settings import IngestSettings


def main() -> None:
    run("ingest", IngestSettings, create_app, run_migrations)


if __name__ == "__main__":
    main()
