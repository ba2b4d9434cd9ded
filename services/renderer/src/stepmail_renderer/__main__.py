"""``python -m stepmail_renderer [serve|migrate]``."""

from stepmail_common.runner import main as run
from stepmail_renderer.app import create_app, run_migrations
from stepmail_renderer.settings import RendererSettings


def main() -> None:
    run("renderer", RendererSettings, create_app, run_migrations)


if __name__ == "__main__":
    main()
