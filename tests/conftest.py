"""Shared fixtures: real Postgres, broker and SMTP catcher, started once per session."""

from stepmail_devstack.pytest_fixtures import (
    database_url,
    fresh_database,
    kafka_bootstrap,
    postgres_dsn,
    repo_root,
    smtp_catcher,
)

__all__ = [
    "database_url",
    "fresh_database",
    "kafka_bootstrap",
    "postgres_dsn",
    "repo_root",
    "smtp_catcher",
]
