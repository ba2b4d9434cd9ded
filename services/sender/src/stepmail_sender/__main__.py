"""``python -m stepmail_sender [serve|migrate]``."""

from stepmail_common.runner import main as run
from stepmail_sender.app import create_app, run_migrations
from stepmail_sender.settings import SenderSettings


def main() -> None:
    run("sender", SenderSettings, create_app, run_migrations)


if __name__ == "__main__":
    main()
