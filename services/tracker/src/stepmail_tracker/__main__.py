"""``python -m stepmail_tracker [serve|migrate]``."""

from stepmail_common.runner import main as run
from stepmail_tracker.app import create_app, run_migrations
from stepmail_tracker.settings import TrackerSettings


def main() -> None:
    run("tracker", TrackerSettings, create_app, run_migrations)


if __name__ == "__main__":
    main()
