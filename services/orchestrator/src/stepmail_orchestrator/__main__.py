"""``python -m stepmail_orchestrator [serve|migrate]``."""

from stepmail_common.runner import main as run
from stepmail_orchestrator.app import create_app, run_migrations
from stepmail_orchestrator.settings import OrchestratorSettings


def main() -> None:
    run("orchestrator", OrchestratorSettings, create_app, run_migrations)


if __name__ == "__main__":
    main()
