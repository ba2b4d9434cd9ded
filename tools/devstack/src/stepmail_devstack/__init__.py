"""stepmail on one machine: embedded Postgres, a Kafka-protocol broker, an SMTP catcher.

- ``postgres``: :class:`~stepmail_devstack.postgres.EmbeddedPostgres`
- ``broker``: :class:`~stepmail_devstack.broker.EmbeddedBroker` (memory only)
- ``catcher``: the SMTP catcher and :class:`~stepmail_devstack.catcher.CatcherProcess`
- ``services``: the five services as processes, configured by environment
- ``runner`` / ``__main__``: ``stepmail-dev run``, used by ``make run``
- ``pytest_fixtures``: the shared test fixtures
"""
